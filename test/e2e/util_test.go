package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/build/v1/buildv1connect"
	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"
	"net/http"
)

// vertex is the part of a rawjson progress line the tests read.
type vertex struct {
	Digest    string
	Name      string
	Cached    bool
	Completed *string
	Error     string
}

// dockerfileSteps parses `--progress rawjson` output into the final state
// of each Dockerfile step ("[stage n/m] …", not "[internal] …").
func dockerfileSteps(t *testing.T, rawjson string) map[string]vertex {
	t.Helper()
	steps := map[string]vertex{}
	sc := bufio.NewScanner(strings.NewReader(rawjson))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var st struct{ Vertexes []vertex }
		if err := json.Unmarshal(line, &st); err != nil {
			continue
		}
		for _, v := range st.Vertexes {
			if !strings.HasPrefix(v.Name, "[") || strings.HasPrefix(v.Name, "[internal]") {
				continue
			}
			prev := steps[v.Name]
			prev.Name = v.Name
			prev.Cached = prev.Cached || v.Cached
			if v.Completed != nil {
				prev.Completed = v.Completed
			}
			if v.Error != "" {
				prev.Error = v.Error
			}
			steps[v.Name] = prev
		}
	}
	if len(steps) == 0 {
		t.Fatalf("no Dockerfile steps in rawjson progress:\n%s", tail(rawjson, 4000))
	}
	return steps
}

func cachedCount(steps map[string]vertex) int {
	n := 0
	for _, v := range steps {
		if v.Cached {
			n++
		}
	}
	return n
}

// ociFile returns the content of path in the image of an OCI layout tar
// (the topmost layer that has it).
func ociFile(t *testing.T, archive, path string) string {
	t.Helper()
	blobs := map[string][]byte{}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", archive, err)
		}
		b, _ := io.ReadAll(tr)
		blobs[strings.TrimPrefix(h.Name, "./")] = b
	}
	if _, ok := blobs["oci-layout"]; !ok {
		t.Fatalf("%s has no oci-layout file", archive)
	}
	var index struct {
		Manifests []struct{ Digest, MediaType string }
	}
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) == 0 {
		t.Fatalf("%s: bad index.json: %v", archive, err)
	}
	blob := func(d string) []byte { return blobs["blobs/"+strings.Replace(d, ":", "/", 1)] }
	var manifest struct {
		Layers    []struct{ Digest string }
		Manifests []struct{ Digest string }
	}
	json.Unmarshal(blob(index.Manifests[0].Digest), &manifest)
	if len(manifest.Manifests) > 0 { // an index: take the first image
		json.Unmarshal(blob(manifest.Manifests[0].Digest), &manifest)
	}
	found := ""
	for _, l := range manifest.Layers {
		var r io.Reader = bytes.NewReader(blob(l.Digest))
		if zr, err := gzip.NewReader(bytes.NewReader(blob(l.Digest))); err == nil {
			r = zr
		}
		lr := tar.NewReader(r)
		for {
			h, err := lr.Next()
			if err != nil {
				break
			}
			if strings.TrimPrefix(h.Name, "./") == strings.TrimPrefix(path, "/") {
				b, _ := io.ReadAll(lr)
				found = string(b)
			}
		}
	}
	if found == "" {
		t.Fatalf("%s not found in any layer of %s", path, archive)
	}
	return found
}

// api is a depot.cli.v1 client as the depot CLI uses it.
func (s *server) api() cliv1connect.BuildServiceClient {
	return cliv1connect.NewBuildServiceClient(http.DefaultClient, s.URL)
}

func bearer[T any](m *T, token string) *connect.Request[T] {
	r := connect.NewRequest(m)
	r.Header().Set("Authorization", "Bearer "+token)
	return r
}

// createBuild opens a build in project with token and returns id and build token.
func (s *server) createBuild(t *testing.T, project, token string) (string, string) {
	t.Helper()
	res, err := s.api().CreateBuild(t.Context(), bearer(&cliv1.CreateBuildRequest{ProjectId: project,
		Options: []*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD}}}, token))
	if err != nil {
		t.Fatalf("CreateBuild in %s: %v", project, err)
	}
	return res.Msg.BuildId, res.Msg.BuildToken
}

// activeConnection polls GetBuildKitConnection until the builder is ready.
func (s *server) activeConnection(t *testing.T, buildID, token string) *cliv1.GetBuildKitConnectionResponse_ActiveConnection {
	t.Helper()
	var active *cliv1.GetBuildKitConnectionResponse_ActiveConnection
	eventually(t, 90*1e9, "builder ready", func() bool {
		res, err := s.api().GetBuildKitConnection(t.Context(), bearer(&cliv1.GetBuildKitConnectionRequest{BuildId: buildID,
			Platform: cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64}, token))
		if err != nil {
			t.Fatalf("GetBuildKitConnection: %v", err)
		}
		active = res.Msg.GetActive()
		return active != nil
	})
	return active
}

func (s *server) buildStatus(t *testing.T, project, buildID string) cliv1.BuildStatus {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds: %v", err)
	}
	for _, b := range res.Msg.Builds {
		if b.Id == buildID {
			return b.Status
		}
	}
	t.Fatalf("build %s not in ListBuilds of %s", buildID, project)
	return 0
}

// steps returns what the server stored for a build (depot.build.v1).
func (s *server) steps(t *testing.T, project, buildID string) []*buildv1.GetBuildStepsResponse_BuildStep {
	t.Helper()
	c := buildv1connect.NewBuildServiceClient(http.DefaultClient, s.URL)
	res, err := c.GetBuildSteps(t.Context(), bearer(&buildv1.GetBuildStepsRequest{ProjectId: project, BuildId: buildID}, s.Token))
	if err != nil {
		t.Fatalf("GetBuildSteps: %v", err)
	}
	return res.Msg.BuildSteps
}

func (s *server) stepLogs(t *testing.T, project, buildID, digest string) string {
	t.Helper()
	c := buildv1connect.NewBuildServiceClient(http.DefaultClient, s.URL)
	res, err := c.GetBuildStepLogs(t.Context(), bearer(&buildv1.GetBuildStepLogsRequest{ProjectId: project, BuildId: buildID, BuildStepDigest: digest}, s.Token))
	if err != nil {
		t.Fatalf("GetBuildStepLogs: %v", err)
	}
	var sb strings.Builder
	for _, l := range res.Msg.Logs {
		sb.WriteString(l.Message)
	}
	return sb.String()
}

func (s *server) latestBuild(t *testing.T, project string) string {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project}, s.Token))
	if err != nil || len(res.Msg.Builds) == 0 {
		t.Fatalf("ListBuilds(%s): %v", project, err)
	}
	return res.Msg.Builds[0].Id
}
