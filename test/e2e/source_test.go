package e2e

// Builds from uploaded source: the platform flow. A platform asks for an
// upload URL, PUTs a tar.gz with curl, starts the build for its customer,
// watches it to the end, and pulls and runs the image with Docker.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/build/v1/buildv1connect"
	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	"connectrpc.com/connect"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/blob/s3test"
)

func (s *server) sourceAPI() kilnv1connect.SourceBuildServiceClient {
	return kilnv1connect.NewSourceBuildServiceClient(http.DefaultClient, s.URL)
}

func customer(id string) *kilnv1.ProjectRef {
	return &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_CustomerId{CustomerId: id}}
}

// tarEntry is one entry of a test archive.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func file(name, body string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}, body: body}
}

// tarGz packs entries into a gzip'd tar.
func tarGz(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.body != "" {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes()
}

// contextArchive is a build context with busybox, as a tar.gz.
func contextArchive(t *testing.T, files map[string]string) []byte {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	entries := []tarEntry{file("busybox", string(bb), 0o755)}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		entries = append(entries, file(n, files[n], 0o644))
	}
	return tarGz(t, entries...)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// upload asks for an upload URL and PUTs data to it with `curl -T`, as a
// platform's CLI would. It returns the context key, and curl's HTTP status
// and body.
func (s *server) upload(t *testing.T, token string, ref *kilnv1.ProjectRef, data []byte, declare bool) (key string, status int, body string) {
	t.Helper()
	req := &kilnv1.GenerateUploadURLRequest{Project: ref}
	if declare {
		req.Size, req.Sha256 = int64(len(data)), sha256Hex(data)
	}
	res, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(req, token))
	if err != nil {
		t.Fatalf("GenerateUploadURL: %v", err)
	}
	status, body = curlPut(t, res.Msg.Url, res.Msg.Headers, data)
	return res.Msg.ContextKey, status, body
}

// curlPut uploads data with `curl -T` and returns the HTTP status and body.
func curlPut(t *testing.T, url string, headers map[string]string, data []byte) (int, string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "context.tar.gz")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-sS", "-T", f, "-o", "-", "-w", "\n%{http_code}"}
	for k, v := range headers {
		args = append(args, "-H", k+": "+v)
	}
	out, err := exec.Command("curl", append(args, url)...).Output()
	if err != nil {
		t.Fatalf("curl -T: %v", err)
	}
	text := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(text, "\n")
	var code int
	fmt.Sscanf(text[i+1:], "%d", &code)
	return code, text[:max(i, 0)]
}

// watched is what one WatchBuild saw.
type watched struct {
	statuses []kilnv1.BuildStatus
	steps    map[string]*kilnv1.Step
	logs     strings.Builder
	seqs     []int64
	last     *kilnv1.Build
}

// watch follows a build with WatchBuild until the stream ends.
func (s *server) watch(t *testing.T, token, buildID string, timeout time.Duration) *watched {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	stream, err := s.sourceAPI().WatchBuild(ctx, bearer(&kilnv1.WatchBuildRequest{BuildId: buildID}, token))
	if err != nil {
		t.Fatalf("WatchBuild: %v", err)
	}
	w := &watched{steps: map[string]*kilnv1.Step{}}
	for stream.Receive() {
		switch e := stream.Msg().Event.(type) {
		case *kilnv1.WatchBuildResponse_Build:
			w.statuses = append(w.statuses, e.Build.Status)
			w.last = e.Build
		case *kilnv1.WatchBuildResponse_Step:
			w.steps[e.Step.Digest] = e.Step
		case *kilnv1.WatchBuildResponse_Log:
			w.logs.WriteString(e.Log.Message)
			w.seqs = append(w.seqs, e.Log.Seq)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("WatchBuild %s: %v", buildID, err)
	}
	if w.last == nil {
		t.Fatalf("WatchBuild %s sent no build", buildID)
	}
	return w
}

func (w *watched) stepNamed(sub string) *kilnv1.Step {
	for _, st := range w.steps {
		if strings.Contains(st.Name, sub) {
			return st
		}
	}
	return nil
}

func (s *server) getSourceBuild(t *testing.T, token, id string) *kilnv1.Build {
	t.Helper()
	res, err := s.sourceAPI().GetBuild(t.Context(), bearer(&kilnv1.GetBuildRequest{BuildId: id}, token))
	if err != nil {
		t.Fatalf("GetBuild %s: %v", id, err)
	}
	return res.Msg.Build
}

const sourceDockerfile = baseStages + `FROM busybox
ARG GREETING
COPY . /ctx
RUN --mount=type=secret,id=deploy_key test "$(cat /run/secrets/deploy_key)" = "s3cr3t-value"
RUN echo "$GREETING from source" > /greeting && rm /ctx/busybox
CMD ["/bin/cat", "/greeting"]
`

// sourceFlow is the whole platform flow on a running server: upload with
// curl, CreateBuild for a new customer, WatchBuild to the end, then pull
// the image from kiln's registry into a real Docker engine and run it.
func sourceFlow(t *testing.T, s *server) {
	data := contextArchive(t, map[string]string{
		"Dockerfile":    sourceDockerfile,
		".dockerignore": "ignored.txt\n",
		"ignored.txt":   "must not reach the builder",
		"app/main.txt":  "the app",
	})
	key, code, body := s.upload(t, s.Token, customer("acme-corp"), data, true)
	if code != http.StatusOK {
		t.Fatalf("curl -T: HTTP %d: %s", code, body)
	}
	res, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{
		Project: customer("acme-corp"), ContextKey: key, Tags: []string{"v1", "web:latest"},
		BuildArgs: map[string]string{"GREETING": "hello"}, Secrets: map[string]string{"deploy_key": "s3cr3t-value"},
	}, s.Token))
	if err != nil {
		t.Fatalf("CreateBuild: %v", err)
	}
	if res.Msg.Status != kilnv1.BuildStatus_BUILD_STATUS_QUEUED && res.Msg.Status != kilnv1.BuildStatus_BUILD_STATUS_RUNNING {
		t.Errorf("CreateBuild answered status %v; want it queued at once", res.Msg.Status)
	}
	w := s.watch(t, s.Token, res.Msg.BuildId, 4*time.Minute)
	b := w.last
	if b.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("build ended %v: %s\nlogs:\n%s", b.Status, b.Error, tail(w.logs.String(), 4000))
	}
	for _, want := range []kilnv1.BuildStatus{kilnv1.BuildStatus_BUILD_STATUS_RUNNING, kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED} {
		if !containsStatus(w.statuses, want) {
			t.Errorf("WatchBuild statuses %v lack %v", w.statuses, want)
		}
	}
	if w.stepNamed("RUN echo") == nil || w.stepNamed("fetch and check the build context") == nil {
		t.Errorf("WatchBuild steps lack the RUN step or kiln's context step: %v", stepNames(w))
	}
	for i, seq := range w.seqs {
		if seq != int64(i+1) {
			t.Fatalf("log line %d has seq %d: lines were lost or repeated", i, seq)
		}
	}
	if b.CustomerId != "acme-corp" || b.ImageDigest == "" || len(b.ImageRefs) != 3 {
		t.Fatalf("build = customer %q digest %q refs %v", b.CustomerId, b.ImageDigest, b.ImageRefs)
	}
	if got := s.getSourceBuild(t, s.Token, b.BuildId); got.Status != b.Status || got.ImageDigest != b.ImageDigest {
		t.Errorf("GetBuild = %v %s; WatchBuild said %v %s", got.Status, got.ImageDigest, b.Status, b.ImageDigest)
	}
	// Steps and logs are also Depot's: depot.build.v1 GetBuildSteps.
	if steps := s.steps(t, b.ProjectId, b.BuildId); len(steps) == 0 {
		t.Errorf("depot.build.v1 GetBuildSteps has no steps for the source build")
	}
	// A late watcher gets the whole record again.
	if again := s.watch(t, s.Token, b.BuildId, time.Minute); again.logs.String() != w.logs.String() || len(again.steps) != len(w.steps) {
		t.Errorf("a second watcher saw %d steps and %d log bytes; the first %d and %d", len(again.steps), again.logs.Len(), len(w.steps), w.logs.Len())
	}

	d := startDockerd(t)
	host := s.registryHost()
	if out, err := d.docker(t, "login", host, "-u", "x-token", "-p", s.Token); err != nil {
		t.Fatalf("docker login: %v\n%s", err, out)
	}
	for _, ref := range []string{b.ImageRefs[1], b.ImageRefs[2]} {
		if out, err := d.docker(t, "pull", ref); err != nil {
			t.Fatalf("docker pull %s: %v\n%s", ref, err, out)
		}
	}
	if want := host + "/" + b.ProjectId + ":v1"; b.ImageRefs[1] != want {
		t.Errorf("tag v1 became %s, want %s", b.ImageRefs[1], want)
	}
	out, err := d.docker(t, "run", "--rm", "--network", "none", b.ImageRefs[1])
	if err != nil || strings.TrimSpace(out) != "hello from source" {
		t.Fatalf("docker run: %v: %q", err, out)
	}
	out, err = d.docker(t, "run", "--rm", "--network", "none", b.ImageRefs[1], "/bin/ls", "-a", "/ctx")
	if err != nil || !strings.Contains(out, "app") || strings.Contains(out, "ignored.txt") {
		t.Errorf(".dockerignore not applied: ls /ctx = %q (%v)", out, err)
	}
	if digest, _ := d.docker(t, "inspect", "--format", "{{index .RepoDigests 0}}", b.ImageRefs[1]); !strings.Contains(digest, b.ImageDigest) {
		t.Errorf("pulled image digest %q, build says %s", strings.TrimSpace(digest), b.ImageDigest)
	}
}

func containsStatus(list []kilnv1.BuildStatus, s kilnv1.BuildStatus) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func stepNames(w *watched) []string {
	var out []string
	for _, st := range w.steps {
		out = append(out, st.Name)
	}
	return out
}

// The whole flow on embedded defaults: local-disk blobs behind URLs kiln
// signs and serves itself.
func TestSourceBuildFlowLocal(t *testing.T) {
	t.Parallel()
	sourceFlow(t, startServer(t))
}

// The whole flow with contexts in a real S3 server (versitygw). The public
// endpoint names another host than the internal one, as behind a proxy:
// the upload URL is signed for the public host and works there.
func TestSourceBuildFlowS3(t *testing.T) {
	t.Parallel()
	gw := s3test.Start(t)
	public := strings.Replace(gw.Endpoint, "127.0.0.1", "localhost", 1)
	s := startServerEnv(t, withS3Env(gw), "--contexts-s3-bucket", gw.Bucket, "--contexts-s3-endpoint", gw.Endpoint,
		"--contexts-s3-public-endpoint", public, "--contexts-s3-region", gw.Region)
	res, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("probe")}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Msg.Url, public+"/") {
		t.Fatalf("upload URL %s is not on the public endpoint %s", res.Msg.Url, public)
	}
	sourceFlow(t, s)

	// S3 can't check a digest on a presigned PUT: a body of the declared
	// size but other bytes is stored, and the build refuses it before
	// reading it as an archive, naming both digests.
	good := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\n"})
	up, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("acme-corp"),
		Size: int64(len(good)), Sha256: sha256Hex(good)}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	swapped := bytes.Clone(good)
	swapped[len(swapped)/2] ^= 0xff
	if code, body := curlPut(t, up.Msg.Url, up.Msg.Headers, swapped); code != 200 {
		t.Fatalf("PUT to S3: %d %s", code, body)
	}
	cr, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("acme-corp"), ContextKey: up.Msg.ContextKey}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	w := s.watch(t, s.Token, cr.Msg.BuildId, time.Minute)
	if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(w.last.Error, "sha256") || !strings.Contains(w.last.Error, sha256Hex(good)) {
		t.Errorf("a swapped upload: %v %q; want failed naming the declared digest", w.last.Status, w.last.Error)
	}
}

func withS3Env(gw *s3test.Server) []string {
	return []string{"KILN_S3_ACCESS_KEY=" + gw.AccessKey, "KILN_S3_SECRET_KEY=" + gw.SecretKey}
}

// Two first builds of a new customer, at the same time, make one project.
func TestSourceBuildConcurrentFirstBuildsOneProject(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo built\n"})
	var wg sync.WaitGroup
	ids := make([]string, 2)
	projects := make([]string, 2)
	errs := make([]error, 2)
	start := make(chan struct{})
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			up, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("newco")}, s.Token))
			if err != nil {
				errs[i] = err
				return
			}
			req, _ := http.NewRequest(http.MethodPut, up.Msg.Url, bytes.NewReader(data))
			res, err := http.DefaultClient.Do(req)
			if err != nil || res.StatusCode != 200 {
				errs[i] = fmt.Errorf("PUT: %v %v", res, err)
				return
			}
			res.Body.Close()
			cr, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("newco"), ContextKey: up.Msg.ContextKey}, s.Token))
			if err != nil {
				errs[i] = err
				return
			}
			ids[i], projects[i] = cr.Msg.BuildId, cr.Msg.ProjectId
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if projects[0] != projects[1] {
		t.Fatalf("two first builds of one customer landed in projects %s and %s", projects[0], projects[1])
	}
	out := s.mustKiln(t, "", "projects", "list", "--token", s.Token)
	if n := strings.Count(out.Stdout, "customer newco"); n != 1 {
		t.Errorf("projects for customer newco: %d, want 1\n%s", n, out.Stdout)
	}
	for _, id := range ids {
		if w := s.watch(t, s.Token, id, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
			t.Errorf("build %s: %v %s", id, w.last.Status, w.last.Error)
		}
	}
}

// Two uploads of one customer whose file differs only in content (the
// same size, the archive's one modification time, as tarballs made with
// SOURCE_DATE_EPOCH have) are each built with their own file: the
// builder's context transfer, which skips files of unchanged size and
// time, must not compare one upload with the other.
func TestSourceBuildSameSizeSameTimeFilesAreSent(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, marker := range []string{"first-0", "second0", "third-0"} {
		data := contextArchive(t, map[string]string{
			"Dockerfile": baseStages + "FROM busybox\nCOPY id /id\nRUN echo \"built $(cat /id)\"\n",
			"id":         marker,
		})
		b := s.createSource(t, s.Token, customer("reproducible"), data)
		w := s.watch(t, s.Token, b.BuildId, 3*time.Minute)
		if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
			t.Fatalf("build of %s: %v %s", marker, w.last.Status, w.last.Error)
		}
		if !strings.Contains(w.logs.String(), "built "+marker) {
			t.Fatalf("the build of %s did not build its own file (a previous upload's was taken for unchanged)\nlog:\n%s", marker, tail(w.logs.String(), 2000))
		}
	}
}

// createSource uploads a context and starts a build of it.
func (s *server) createSource(t *testing.T, token string, ref *kilnv1.ProjectRef, data []byte) *kilnv1.CreateBuildResponse {
	t.Helper()
	key, code, body := s.upload(t, token, ref, data, true)
	if code != 200 {
		t.Fatalf("upload: HTTP %d %s", code, body)
	}
	res, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: ref, ContextKey: key}, token))
	if err != nil {
		t.Fatalf("CreateBuild: %v", err)
	}
	return res.Msg
}

// waitStep waits until a watcher sees a step whose name contains sub start.
func (s *server) waitStepStarted(t *testing.T, buildID, sub string) {
	t.Helper()
	eventually(t, 3*time.Minute, "step "+sub+" to start", func() bool {
		w := s.watchNoFollow(t, buildID)
		st := w.stepNamed(sub)
		return st != nil && st.StartedAt != nil
	})
}

func (s *server) watchNoFollow(t *testing.T, buildID string) *watched {
	t.Helper()
	stream, err := s.sourceAPI().WatchBuild(t.Context(), bearer(&kilnv1.WatchBuildRequest{BuildId: buildID, NoFollow: true}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	w := &watched{steps: map[string]*kilnv1.Step{}}
	for stream.Receive() {
		switch e := stream.Msg().Event.(type) {
		case *kilnv1.WatchBuildResponse_Build:
			w.last = e.Build
		case *kilnv1.WatchBuildResponse_Step:
			w.steps[e.Step.Digest] = e.Step
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return w
}

// Cancel mid-build stops the solve within seconds: the RUN process is gone
// and the build says canceled.
func TestSourceBuildCancelMidBuild(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 317\n"})
	b := s.createSource(t, s.Token, customer("slowco"), data)
	s.waitStepStarted(t, b.BuildId, "RUN sleep 317")
	eventually(t, 30*time.Second, "the RUN process to exist", func() bool { return len(processesNamed("sleep 317")) > 0 })
	res, err := s.sourceAPI().CancelBuild(t.Context(), bearer(&kilnv1.CancelBuildRequest{BuildId: b.BuildId}, s.Token))
	if err != nil {
		t.Fatalf("CancelBuild: %v", err)
	}
	if res.Msg.Build.Status != kilnv1.BuildStatus_BUILD_STATUS_CANCELED {
		t.Errorf("CancelBuild answered %v", res.Msg.Build.Status)
	}
	eventually(t, 15*time.Second, "the RUN process to be killed", func() bool { return len(processesNamed("sleep 317")) == 0 })
	if got := s.getSourceBuild(t, s.Token, b.BuildId); got.Status != kilnv1.BuildStatus_BUILD_STATUS_CANCELED {
		t.Errorf("after cancel the build is %v", got.Status)
	}
	// The project's builder is still good for the next build.
	next := s.createSource(t, s.Token, customer("slowco"), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo after-cancel\n"}))
	if w := s.watch(t, s.Token, next.BuildId, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Errorf("build after cancel: %v %s", w.last.Status, w.last.Error)
	}
}

// A restart with one build running and others queued behind it (one build
// per project at a time) ends the running one, saying why, and runs the
// queued ones; nothing stays running. A full queue refuses more.
func TestSourceBuildRestartResumesQueue(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--source-builds-per-project", "1", "--source-queue-per-project", "2")
	slow := s.createSource(t, s.Token, customer("restartco"), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 318\n"}))
	s.waitStepStarted(t, slow.BuildId, "RUN sleep 318")
	var queued []string
	for i := range 2 {
		b := s.createSource(t, s.Token, customer("restartco"), contextArchive(t, map[string]string{"Dockerfile": baseStages + fmt.Sprintf("FROM busybox\nRUN echo queued-%d\n", i)}))
		if got := s.getSourceBuild(t, s.Token, b.BuildId); got.Status != kilnv1.BuildStatus_BUILD_STATUS_QUEUED {
			t.Fatalf("build %d is %v, want queued behind the running one", i, got.Status)
		}
		queued = append(queued, b.BuildId)
	}
	// The project's queue is full: more builds are refused, not piled up.
	key, _, _ := s.upload(t, s.Token, customer("restartco"), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\n"}), true)
	if _, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("restartco"), ContextKey: key}, s.Token)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("a third waiting build: %v; want ResourceExhausted", err)
	}
	s.restart(t)
	if got := s.getSourceBuild(t, s.Token, slow.BuildId); got.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(got.Error, "RebuildBuild") {
		t.Errorf("the interrupted build is %v %q; want failed, saying how to start it again", got.Status, got.Error)
	}
	for _, id := range queued {
		if w := s.watch(t, s.Token, id, 4*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
			t.Errorf("queued build %s after restart: %v %s", id, w.last.Status, w.last.Error)
		}
	}
	if len(processesNamed("sleep 318")) != 0 {
		t.Errorf("the interrupted build's RUN process survived the restart")
	}
	// RebuildBuild runs the interrupted build again from its context.
	rb, err := s.sourceAPI().RebuildBuild(t.Context(), bearer(&kilnv1.RebuildBuildRequest{BuildId: slow.BuildId}, s.Token))
	if err != nil {
		t.Fatalf("RebuildBuild: %v", err)
	}
	if got := s.getSourceBuild(t, s.Token, rb.Msg.BuildId); got.RebuildOf != slow.BuildId {
		t.Errorf("rebuild says rebuild_of %q", got.RebuildOf)
	}
	s.sourceAPI().CancelBuild(t.Context(), bearer(&kilnv1.CancelBuildRequest{BuildId: rb.Msg.BuildId}, s.Token))
}

// Hostile uploads are refused with an error naming the problem, nothing
// is written outside the build's directory, and the server stays healthy.
func TestSourceBuildHostileUploads(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--upload-url-ttl", "2s", "--max-context-size", "8388608")
	marker := fmt.Sprintf("kiln-escape-%d", time.Now().UnixNano())
	zeros := strings.Repeat("\x00", 64<<20)
	hostile := []struct {
		name    string
		archive []byte
		want    string
	}{
		{"traversal", tarGz(t, file("../../"+marker, "x", 0o644)), "escapes"},
		{"nested traversal", tarGz(t, file("a/../../"+marker, "x", 0o644)), "escapes"},
		{"absolute path", tarGz(t, file("/tmp/"+marker, "x", 0o644)), "absolute"},
		{"symlink escape", tarGz(t,
			tarEntry{hdr: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/tmp", Mode: 0o777}},
			file("link/"+marker, "x", 0o644)), "link"},
		{"relative symlink escape", tarGz(t,
			tarEntry{hdr: tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../tmp", Mode: 0o777}},
			file("up/"+marker, "x", 0o644)), "escapes"},
		{"hardlink escape", tarGz(t,
			tarEntry{hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../../../etc/passwd"}}), "escapes"},
		{"device node", tarGz(t,
			tarEntry{hdr: tar.Header{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}}), "device"},
		{"setuid", tarGz(t, file("su", "x", 0o4755)), "setuid"},
		{"tar bomb", tarGz(t, file("zeros", zeros, 0o644)), "bomb"},
		{"truncated gzip", func() []byte {
			b := contextArchive(t, map[string]string{"Dockerfile": "FROM scratch\n"})
			return b[:len(b)/2]
		}(), "truncated"},
		{"not an archive", []byte("this is not a tar archive at all, just text that goes on\n"), "archive"},
	}
	org := s.Token
	for _, h := range hostile {
		t.Run(h.name, func(t *testing.T) {
			b := s.createSource(t, org, customer("mallory"), h.archive)
			w := s.watch(t, org, b.BuildId, time.Minute)
			if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(strings.ToLower(w.last.Error), h.want) {
				t.Errorf("build %v: %q; want failed naming %q", w.last.Status, w.last.Error, h.want)
			}
			if strings.Contains(w.last.Error, s.Data) {
				t.Errorf("the error shows a server path: %s", w.last.Error)
			}
		})
	}

	// Declared digest and size: the local store refuses a different body
	// at once, naming both digests, and keeps nothing.
	good := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\n"})
	res, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("mallory"),
		Size: int64(len(good)), Sha256: sha256Hex(good)}, org))
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(good)
	tampered[len(tampered)/2] ^= 0xff
	if code, body := curlPut(t, res.Msg.Url, nil, tampered); code != 400 || !strings.Contains(body, "sha256") {
		t.Errorf("PUT with the wrong digest: HTTP %d %q; want 400 naming the digest", code, body)
	}
	if _, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("mallory"), ContextKey: res.Msg.ContextKey}, org)); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("CreateBuild of a refused upload: %v; want FailedPrecondition (not uploaded)", err)
	}
	// Oversized: refused at GenerateUploadURL before anything is written.
	if _, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("mallory"), Size: 9 << 20}, org)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("oversized declared upload: %v; want ResourceExhausted", err)
	}
	// Tampered URL: a changed signature or key is refused.
	issued := time.Now()
	res, err = s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("mallory")}, org))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		strings.Replace(res.Msg.Url, "sig=", "sig=0", 1),
		strings.Replace(res.Msg.Url, res.Msg.ContextKey, "ctx_someoneelse", 1),
	} {
		if code, body := curlPut(t, bad, nil, good); code != 403 || !strings.Contains(body, "signature") {
			t.Errorf("tampered URL: HTTP %d %q; want 403 naming the signature", code, body)
		}
	}
	// Expired URL (the server issues 2 s URLs here): 3 s after it was asked for.
	time.Sleep(time.Until(issued.Add(3 * time.Second)))
	if code, body := curlPut(t, res.Msg.Url, nil, good); code != 403 || !strings.Contains(body, "expired") {
		t.Errorf("expired URL: HTTP %d %q; want 403 saying it expired", code, body)
	}

	// Nothing escaped: no marker file anywhere under the data dir's
	// parent or /tmp, and the work dirs were removed.
	for _, dir := range []string{filepath.Dir(s.Data), "/tmp", "/"} {
		if _, err := os.Stat(filepath.Join(dir, marker)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was written outside the build's directory", filepath.Join(dir, marker))
		}
	}
	filepath.Walk(s.Data, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), marker) {
			t.Errorf("a hostile entry was extracted: %s", p)
		}
		return nil
	})
	if entries, _ := os.ReadDir(filepath.Join(s.Data, "work")); len(entries) != 0 {
		t.Errorf("scratch dirs left behind: %d", len(entries))
	}
	// Still healthy: a good build of the same customer succeeds.
	ok := s.createSource(t, org, customer("mallory"), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo fine\n"}))
	if w := s.watch(t, org, ok.BuildId, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Errorf("good build after hostile ones: %v %s", w.last.Status, w.last.Error)
	}
}

// One customer's token reaches nothing of another's: contexts, builds,
// logs, steps, cancel, rebuild. Every answer is NotFound, as for ids that
// don't exist.
func TestSourceBuildCustomerIsolation(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--max-contexts-per-project", "2")
	data := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo private-log-line-of-bob\n"})
	alice := s.createSource(t, s.Token, customer("alice"), data)
	bob := s.createSource(t, s.Token, customer("bob"), data)
	bobKey, _, _ := s.upload(t, s.Token, customer("bob"), data, false)
	s.watch(t, s.Token, bob.BuildId, 3*time.Minute)
	s.watch(t, s.Token, alice.BuildId, 3*time.Minute)

	tok := s.mustKiln(t, "", "tokens", "create", "--project", alice.ProjectId, "--token", s.Token)
	aliceToken := ""
	for _, f := range strings.Fields(tok.Stdout) {
		if strings.HasPrefix(f, "kiln_prj_") {
			aliceToken = f
		}
	}
	if aliceToken == "" {
		t.Fatalf("no project token in:\n%s", tok.Stdout)
	}
	api := s.sourceAPI()
	ctx := t.Context()
	notFound := func(what string, err error) {
		t.Helper()
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("%s with alice's token: %v; want NotFound", what, err)
		}
		if err != nil && strings.Contains(err.Error(), "private-log-line") {
			t.Errorf("%s leaks bob's log: %v", what, err)
		}
	}
	_, err := api.GenerateUploadURL(ctx, bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("bob")}, aliceToken))
	notFound("GenerateUploadURL for bob", err)
	_, err = api.GenerateUploadURL(ctx, bearer(&kilnv1.GenerateUploadURLRequest{Project: &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_ProjectId{ProjectId: bob.ProjectId}}}, aliceToken))
	notFound("GenerateUploadURL in bob's project", err)
	_, err = api.CreateBuild(ctx, bearer(&kilnv1.CreateBuildRequest{ContextKey: bobKey}, aliceToken))
	notFound("CreateBuild with bob's context key", err)
	_, err = api.GetBuild(ctx, bearer(&kilnv1.GetBuildRequest{BuildId: bob.BuildId}, aliceToken))
	notFound("GetBuild of bob's build", err)
	stream, err := api.WatchBuild(ctx, bearer(&kilnv1.WatchBuildRequest{BuildId: bob.BuildId}, aliceToken))
	if err == nil {
		for stream.Receive() {
			t.Errorf("WatchBuild of bob's build sent %v", stream.Msg())
		}
		err = stream.Err()
	}
	notFound("WatchBuild of bob's build", err)
	_, err = api.CancelBuild(ctx, bearer(&kilnv1.CancelBuildRequest{BuildId: bob.BuildId}, aliceToken))
	notFound("CancelBuild of bob's build", err)
	_, err = api.RebuildBuild(ctx, bearer(&kilnv1.RebuildBuildRequest{BuildId: bob.BuildId}, aliceToken))
	notFound("RebuildBuild of bob's build", err)
	_, err = api.ListBuilds(ctx, bearer(&kilnv1.ListBuildsRequest{Project: customer("bob")}, aliceToken))
	notFound("ListBuilds of bob", err)
	_, err = buildv1connect.NewBuildServiceClient(http.DefaultClient, s.URL).GetBuildSteps(ctx,
		bearer(&buildv1.GetBuildStepsRequest{ProjectId: bob.ProjectId, BuildId: bob.BuildId}, aliceToken))
	if code := connect.CodeOf(err); code != connect.CodeNotFound && code != connect.CodePermissionDenied {
		t.Errorf("depot GetBuildSteps of bob's build with alice's token: %v", err)
	}
	// Alice's own token works on her own builds, and lists only hers.
	list, err := api.ListBuilds(ctx, bearer(&kilnv1.ListBuildsRequest{}, aliceToken))
	if err != nil || len(list.Msg.Builds) != 1 || list.Msg.Builds[0].BuildId != alice.BuildId {
		t.Errorf("alice's ListBuilds = %v, %v", list, err)
	}
	if w := s.watch(t, aliceToken, alice.BuildId, time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Errorf("alice watching her own build: %v", w.last.Status)
	}
	// Bob has two contexts retained, the limit here: a third is refused,
	// and alice (one) can still upload.
	if _, err := api.GenerateUploadURL(ctx, bearer(&kilnv1.GenerateUploadURLRequest{Project: customer("bob")}, s.Token)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("bob's third context: %v; want ResourceExhausted", err)
	}
	if _, err := api.GenerateUploadURL(ctx, bearer(&kilnv1.GenerateUploadURLRequest{}, aliceToken)); err != nil {
		t.Errorf("alice's second context: %v", err)
	}
}

// The CLI's async mode: `kiln build --detach` uploads (with progress),
// starts the build and prints only its id; `kiln builds logs -f` follows it
// to the end; list, get and cancel work on it.
func TestSourceBuildCLIDetach(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile":    baseStages + "FROM busybox\nCOPY . /ctx\nRUN echo cli-detached-build && test ! -e /ctx/skip.me\n",
		".dockerignore": "skip.me\n",
		"skip.me":       "ignored",
	})
	env := []string{"KILN_API_URL=" + s.URL, "KILN_TOKEN=" + s.Token}
	res := s.kiln(t, dir, env, "build", "--detach", "--customer", "cli-co", "-t", "v1", ".")
	if res.Err != nil {
		t.Fatalf("kiln build --detach: %v\n%s", res.Err, res.Stderr)
	}
	id := strings.TrimSpace(res.Stdout)
	if id == "" || strings.ContainsAny(id, " \n") || !strings.Contains(res.Stderr, "uploaded context") || !strings.Contains(res.Stderr, "kiln builds logs -f "+id) {
		t.Fatalf("stdout %q, stderr:\n%s", res.Stdout, res.Stderr)
	}
	logs := s.kiln(t, dir, env, "builds", "logs", "-f", id)
	if logs.Err != nil || !strings.Contains(logs.Stdout+logs.Stderr, "cli-detached-build") || !strings.Contains(logs.Stdout, "succeeded") {
		t.Fatalf("kiln builds logs -f: %v\nstdout:\n%s\nstderr:\n%s", logs.Err, logs.Stdout, logs.Stderr)
	}
	get := s.kiln(t, dir, env, "builds", "get", id)
	if get.Err != nil || !strings.Contains(get.Stdout, "succeeded") || !strings.Contains(get.Stdout, ":v1") || !strings.Contains(get.Stdout, "cli-co") {
		t.Errorf("kiln builds get: %v\n%s", get.Err, get.Stdout)
	}
	list := s.kiln(t, dir, env, "builds", "list", "--customer", "cli-co")
	if list.Err != nil || !strings.Contains(list.Stdout, id) {
		t.Errorf("kiln builds list: %v\n%s", list.Err, list.Stdout)
	}

	// A slow build, canceled from the CLI; `logs -f` then exits 1.
	slow := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 319\n"})
	res = s.kiln(t, slow, env, "build", "--detach", "--customer", "cli-co", "--progress", "quiet", ".")
	if res.Err != nil {
		t.Fatalf("kiln build --detach: %v\n%s", res.Err, res.Stderr)
	}
	slowID := strings.TrimSpace(res.Stdout)
	s.waitStepStarted(t, slowID, "RUN sleep 319")
	if c := s.kiln(t, dir, env, "builds", "cancel", slowID); c.Err != nil || !strings.Contains(c.Stdout, "canceled") {
		t.Errorf("kiln builds cancel: %v\n%s%s", c.Err, c.Stdout, c.Stderr)
	}
	if l := s.kiln(t, dir, env, "builds", "logs", "-f", slowID); l.Err == nil || !strings.Contains(l.Stderr, "canceled") {
		t.Errorf("kiln builds logs -f of a canceled build: %v\n%s", l.Err, l.Stderr)
	}
	if bad := s.kiln(t, dir, env, "build", "--detach", "--load", "."); bad.Err == nil || !strings.Contains(bad.Stderr, "--load") {
		t.Errorf("--detach --load: %v\n%s", bad.Err, bad.Stderr)
	}
}

// A source build pushes to a registry the operator gave credentials for
// (--push-auth-file), and to no other.
func TestSourceBuildPushesToConfiguredRegistry(t *testing.T) {
	t.Parallel()
	reg := startRegistry(t)
	cfg := filepath.Join(t.TempDir(), "config.json")
	auth := base64.StdEncoding.EncodeToString([]byte("ci-user:ci-password"))
	if err := os.WriteFile(cfg, []byte(`{"auths":{"`+reg+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "--push-auth-file", cfg, "--insecure-registry", reg)
	key, code, body := s.upload(t, s.Token, customer("extco"), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo external > /x\n"}), true)
	if code != 200 {
		t.Fatalf("upload: %d %s", code, body)
	}
	res, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("extco"), ContextKey: key,
		Tags: []string{reg + "/team/app:v2"}}, s.Token))
	if err != nil {
		t.Fatalf("CreateBuild: %v", err)
	}
	w := s.watch(t, s.Token, res.Msg.BuildId, 3*time.Minute)
	if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("build: %v %s", w.last.Status, w.last.Error)
	}
	if got := mpRemoteDigest(t, reg+"/team/app:v2"); got != w.last.ImageDigest {
		t.Errorf("the external registry has %s, the build says %s", got, w.last.ImageDigest)
	}
	_, err = s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("extco"), ContextKey: key,
		Tags: []string{"registry.example.com/app:v2"}}, s.Token))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "no credentials for registry registry.example.com") {
		t.Errorf("a tag on a registry without credentials: %v", err)
	}
}

// A multi-platform source build: each platform on the customer's builder
// for it, one image index pushed to kiln's registry.
func TestSourceBuildMultiPlatform(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	dir := writeMultiContext(t)
	env := []string{"KILN_API_URL=" + s.URL, "KILN_TOKEN=" + s.Token}
	res := s.kiln(t, dir, env, "build", "--detach", "--customer", "multi-co", "--platform", twoPlatforms, "--progress", "quiet", ".")
	if res.Err != nil {
		t.Fatalf("kiln build --detach: %v\n%s", res.Err, res.Stderr)
	}
	w := s.watch(t, s.Token, strings.TrimSpace(res.Stdout), 6*time.Minute)
	if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("build: %v %s", w.last.Status, w.last.Error)
	}
	idx, err := remote.Index(mpRef(t, w.last.ImageRefs[0]), remote.WithAuth(&authn.Basic{Username: "x-token", Password: s.Token}))
	if err != nil {
		t.Fatalf("read index %s: %v", w.last.ImageRefs[0], err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.OS == "linux" {
			got = append(got, m.Platform.OS+"/"+m.Platform.Architecture)
		}
	}
	sort.Strings(got)
	if strings.Join(got, ",") != twoPlatforms {
		t.Errorf("index platforms = %v, want %s", got, twoPlatforms)
	}
	if d, _ := idx.Digest(); d.String() != w.last.ImageDigest {
		t.Errorf("index digest %s, build says %s", d, w.last.ImageDigest)
	}
	if plats := s.mpBuilderPlatforms(t, w.last.ProjectId); len(plats) != 2 {
		t.Errorf("builders used: %v, want one per platform", plats)
	}
}

// An attacker with project A's token tries to hog upload storage, reuse an
// upload URL, and have a rebuild build substituted content. The quota
// stops it with ResourceExhausted saying what to do, and leaves project B
// its own; a URL takes one upload; a context without a declared digest is
// pinned to what its first build read.
func TestSourceBuildUploadLimitsFromTheAttackersSide(t *testing.T) {
	t.Parallel()
	first := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo first-upload\n"})
	second := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo second-upload\n"})
	n := int64(max(len(first), len(second)))
	quota := 2*n + n/2
	s := startServer(t, "--max-context-size", fmt.Sprint(n), "--max-context-bytes-per-project", fmt.Sprint(quota))
	projA, projB, projC := s.createProject(t, "hog"), s.createProject(t, "neighbour"), s.createProject(t, "pinned")
	tokA := s.projectToken(t, projA)
	api := s.sourceAPI()
	gen := func(tok, proj string, size int64, sum string) (*kilnv1.GenerateUploadURLResponse, error) {
		res, err := api.GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: projectRef(proj), Size: size, Sha256: sum}, tok))
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	}

	// Quota: two contexts of n fit in 2.5n; a third is refused.
	up1, err := gen(tokA, projA, int64(len(first)), sha256Hex(first))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gen(tokA, projA, n, ""); err != nil {
		t.Fatal(err)
	}
	_, err = gen(tokA, projA, n, "")
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "quota") || !strings.Contains(err.Error(), "--max-context-bytes-per-project") {
		t.Errorf("an upload over the quota: %v; want ResourceExhausted naming the quota and what to do", err)
	}
	// An undeclared upload gets a URL for what is left, and no more.
	left := quota - int64(len(first)) - n
	rest, err := gen(tokA, projA, 0, "")
	if err != nil || rest.MaxSize != left {
		t.Fatalf("undeclared upload: max %d, %v; want the %d bytes left", rest.GetMaxSize(), err, left)
	}
	if code, body := curlPut(t, rest.Url, rest.Headers, bytes.Repeat([]byte("x"), int(n))); code != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT of %d bytes to a URL for %d: HTTP %d %s; want 413", n, rest.MaxSize, code, body)
	}
	if _, err := gen(tokA, projA, 0, ""); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("undeclared upload with nothing left: %v; want ResourceExhausted", err)
	}
	// B is untouched.
	if _, err := gen(s.Token, projB, n, ""); err != nil {
		t.Errorf("project B's upload while A is at its quota: %v", err)
	}

	// One upload per URL: the second PUT is refused, the first stays.
	if code, body := curlPut(t, up1.Url, up1.Headers, first); code != http.StatusOK {
		t.Fatalf("first upload: HTTP %d %s", code, body)
	}
	if code, body := curlPut(t, up1.Url, up1.Headers, second); code != http.StatusConflict || !strings.Contains(body, "already used") {
		t.Errorf("second PUT to the same URL: HTTP %d %q; want 409 saying it was used", code, body)
	}
	cr, err := api.CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: projectRef(projA), ContextKey: up1.ContextKey}, tokA))
	if err != nil {
		t.Fatal(err)
	}
	w := s.watch(t, tokA, cr.Msg.BuildId, 3*time.Minute)
	if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED || w.stepNamed("echo first-upload") == nil || w.stepNamed("echo second-upload") != nil {
		t.Errorf("build of the first upload: %v %q, steps %v", w.last.Status, w.last.Error, stepNames(w))
	}

	// Pinning: a context uploaded without a digest, built once, then
	// replaced in storage (as a store that ignores If-None-Match would let
	// a leaked URL do): the rebuild refuses it.
	key, code, body := s.upload(t, s.Token, projectRef(projC), first, false)
	if code != http.StatusOK {
		t.Fatalf("undeclared upload: HTTP %d %s", code, body)
	}
	cr, err = api.CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: projectRef(projC), ContextKey: key}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if w := s.watch(t, s.Token, cr.Msg.BuildId, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("first build of the undeclared context: %v %s", w.last.Status, w.last.Error)
	}
	if err := os.WriteFile(filepath.Join(s.Data, "blobs", "objects", "contexts", projC, key), second, 0o600); err != nil {
		t.Fatal(err)
	}
	rb, err := api.RebuildBuild(t.Context(), bearer(&kilnv1.RebuildBuildRequest{BuildId: cr.Msg.BuildId}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	w = s.watch(t, s.Token, rb.Msg.BuildId, 3*time.Minute)
	if w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(w.last.Error, "replaced") ||
		!strings.Contains(w.last.Error, sha256Hex(first)) || !strings.Contains(w.last.Error, sha256Hex(second)) {
		t.Errorf("rebuild of substituted content: %v %q; want failed naming both digests", w.last.Status, w.last.Error)
	}
	if w.stepNamed("echo second-upload") != nil {
		t.Errorf("the substituted Dockerfile was built")
	}
}
