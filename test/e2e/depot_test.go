package e2e

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	depotbuild "github.com/depot/depot-go/build"
	"github.com/depot/depot-go/machine"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
)

// The real depot-go SDK, unchanged, against kiln via DEPOT_API_URL. Not
// parallel: the SDK reads its URL from the environment (t.Setenv).
func TestDepotGoSDK(t *testing.T) {
	s := sharedServer(t)
	proj := s.createProject(t, "sdk")
	t.Setenv("DEPOT_API_URL", s.URL)
	ctx := t.Context()

	b, err := depotbuild.NewBuild(ctx, &cliv1.CreateBuildRequest{ProjectId: proj,
		Options: []*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD}}}, s.Token)
	if err != nil {
		t.Fatalf("NewBuild: %v", err)
	}
	var buildErr error
	defer func() { b.Finish(buildErr) }()

	m, err := machine.Acquire(ctx, b.ID, b.Token, "amd64")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	defer m.Release()
	c, err := m.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	def, err := llb.Scratch().File(llb.Mkfile("/hello", 0o644, []byte("built through depot-go"))).Marshal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	_, buildErr = c.Solve(ctx, def, client.SolveOpt{Exports: []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: out}}}, nil)
	if buildErr != nil {
		t.Fatalf("Solve: %v", buildErr)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "hello")); string(got) != "built through depot-go" {
		t.Errorf("exported /hello = %q", got)
	}
	b.Finish(nil)
	if st := s.buildStatus(t, proj, b.ID); st != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
		t.Errorf("ListBuilds status %v, want FINISHED", st)
	}
}

// A plain HTTP/1.1 JSON POST works, as Depot's API docs show with curl.
func TestPlainHTTPJSON(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "json-visible")
	req, _ := http.NewRequest("POST", s.URL+"/depot.core.v1.ProjectService/ListProjects", bytes.NewBufferString("{}"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), proj) || res.ProtoMajor != 1 {
		t.Fatalf("ListProjects over HTTP/1.1 JSON: %s %s %s", res.Proto, res.Status, body)
	}
	// Without a token: 401 with Connect's unauthenticated code.
	req, _ = http.NewRequest("POST", s.URL+"/depot.core.v1.ProjectService/ListProjects", bytes.NewBufferString("{}"))
	req.Header.Set("Content-Type", "application/json")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 401 || !strings.Contains(string(body), "unauthenticated") {
		t.Errorf("no token: %s %s", res.Status, body)
	}
}
