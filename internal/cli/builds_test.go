package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// fakeSourceBuilds is a SourceBuildService in memory, plus the upload
// endpoint its upload URLs point at. It records what the CLI sent.
type fakeSourceBuilds struct {
	kilnv1connect.UnimplementedSourceBuildServiceHandler
	url string
	mux *http.ServeMux // more services may be mounted on it

	mu            sync.Mutex
	uploadReq     *kilnv1.GenerateUploadURLRequest
	createReq     *kilnv1.CreateBuildRequest
	uploaded      []byte
	uploadHeader  http.Header
	puts          int
	putStatuses   []int  // answers to successive PUTs; then 200
	putBody       string // body of a non-2xx answer
	watchReqs     []*kilnv1.WatchBuildRequest
	watchStreams  [][]*kilnv1.WatchBuildResponse // one per WatchBuild call; the last repeats
	watchBreak    []bool                         // stream i ends with Unavailable
	builds        []*kilnv1.Build                // ListBuilds pages them one by one
	listReqs      []*kilnv1.ListBuildsRequest
	cancelReq     *kilnv1.CancelBuildRequest
	rebuildReq    *kilnv1.RebuildBuildRequest
	authorization string
}

func newFakeSourceBuilds(t *testing.T) *fakeSourceBuilds {
	t.Helper()
	f := &fakeSourceBuilds{}
	mux := http.NewServeMux()
	mux.Handle(kilnv1connect.NewSourceBuildServiceHandler(f))
	mux.HandleFunc("PUT /upload/ctx-1", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.puts++
		if len(f.putStatuses) > 0 {
			code := f.putStatuses[0]
			f.putStatuses = f.putStatuses[1:]
			w.WriteHeader(code)
			io.WriteString(w, f.putBody)
			return
		}
		if r.ContentLength != int64(len(body)) {
			http.Error(w, "content length mismatch", http.StatusBadRequest)
			return
		}
		f.uploaded, f.uploadHeader = body, r.Header.Clone()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.url, f.mux = srv.URL, mux
	return f
}

func (f *fakeSourceBuilds) GenerateUploadURL(_ context.Context, req *connect.Request[kilnv1.GenerateUploadURLRequest]) (*connect.Response[kilnv1.GenerateUploadURLResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.uploadReq = req.Msg
	f.authorization = req.Header().Get("Authorization")
	return connect.NewResponse(&kilnv1.GenerateUploadURLResponse{
		Url: f.url + "/upload/ctx-1", Headers: map[string]string{"X-Kiln-Upload": "yes"},
		ContextKey: "ctx-1", ProjectId: "p1", MaxSize: 1 << 30,
	}), nil
}

func (f *fakeSourceBuilds) CreateBuild(_ context.Context, req *connect.Request[kilnv1.CreateBuildRequest]) (*connect.Response[kilnv1.CreateBuildResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.createReq = req.Msg
	return connect.NewResponse(&kilnv1.CreateBuildResponse{BuildId: "b1", ProjectId: "p1", Status: kilnv1.BuildStatus_BUILD_STATUS_QUEUED}), nil
}

func (f *fakeSourceBuilds) GetBuild(_ context.Context, req *connect.Request[kilnv1.GetBuildRequest]) (*connect.Response[kilnv1.GetBuildResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.builds {
		if b.BuildId == req.Msg.BuildId {
			return connect.NewResponse(&kilnv1.GetBuildResponse{Build: b}), nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("build %s not found", req.Msg.BuildId))
}

func (f *fakeSourceBuilds) WatchBuild(_ context.Context, req *connect.Request[kilnv1.WatchBuildRequest], stream *connect.ServerStream[kilnv1.WatchBuildResponse]) error {
	f.mu.Lock()
	i := min(len(f.watchReqs), len(f.watchStreams)-1)
	f.watchReqs = append(f.watchReqs, req.Msg)
	events := f.watchStreams[i]
	broken := i < len(f.watchBreak) && f.watchBreak[i]
	f.mu.Unlock()
	for _, ev := range events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if broken {
		return connect.NewError(connect.CodeUnavailable, nil)
	}
	return nil
}

func (f *fakeSourceBuilds) ListBuilds(_ context.Context, req *connect.Request[kilnv1.ListBuildsRequest]) (*connect.Response[kilnv1.ListBuildsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listReqs = append(f.listReqs, req.Msg)
	// One build per page, the token is the next index.
	i := 0
	if req.Msg.PageToken != "" {
		i = int(req.Msg.PageToken[0] - '0')
	}
	res := &kilnv1.ListBuildsResponse{}
	if i < len(f.builds) {
		res.Builds = f.builds[i : i+1]
	}
	if i+1 < len(f.builds) {
		res.NextPageToken = string(rune('0' + i + 1))
	}
	return connect.NewResponse(res), nil
}

func (f *fakeSourceBuilds) CancelBuild(_ context.Context, req *connect.Request[kilnv1.CancelBuildRequest]) (*connect.Response[kilnv1.CancelBuildResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancelReq = req.Msg
	return connect.NewResponse(&kilnv1.CancelBuildResponse{Build: &kilnv1.Build{BuildId: req.Msg.BuildId, Status: kilnv1.BuildStatus_BUILD_STATUS_CANCELED}}), nil
}

func (f *fakeSourceBuilds) RebuildBuild(_ context.Context, req *connect.Request[kilnv1.RebuildBuildRequest]) (*connect.Response[kilnv1.RebuildBuildResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rebuildReq = req.Msg
	return connect.NewResponse(&kilnv1.RebuildBuildResponse{BuildId: "b2", Status: kilnv1.BuildStatus_BUILD_STATUS_QUEUED}), nil
}

// runKiln runs the CLI against the fake and returns stdout, stderr and
// the command's error.
func runKiln(t *testing.T, f *fakeSourceBuilds, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := NewRoot()
	root.SetArgs(append(args, "--api-url", f.url, "--token", "tok-test"))
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetIn(strings.NewReader(""))
	err := root.ExecuteContext(context.Background())
	return stdout.String(), stderr.String(), err
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func buildEvent(b *kilnv1.Build) *kilnv1.WatchBuildResponse {
	return &kilnv1.WatchBuildResponse{Event: &kilnv1.WatchBuildResponse_Build{Build: b}}
}

func stepEvent(s *kilnv1.Step) *kilnv1.WatchBuildResponse {
	return &kilnv1.WatchBuildResponse{Event: &kilnv1.WatchBuildResponse_Step{Step: s}}
}

func logEvent(digest string, seq int64, msg string) *kilnv1.WatchBuildResponse {
	return &kilnv1.WatchBuildResponse{Event: &kilnv1.WatchBuildResponse_Log{Log: &kilnv1.LogLine{Digest: digest, Seq: seq, Message: msg}}}
}

// replay is a build that ran three steps: one cached, one with output,
// one that failed; end is its last status.
func replay(end *kilnv1.Build) []*kilnv1.WatchBuildResponse {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	evs := []*kilnv1.WatchBuildResponse{
		buildEvent(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_QUEUED, QueuePosition: 2}),
		buildEvent(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_RUNNING}),
		stepEvent(&kilnv1.Step{Digest: "sha256:a", Name: "[1/3] FROM docker.io/library/busybox", StartedAt: ts(t0)}),
		stepEvent(&kilnv1.Step{Digest: "sha256:a", Name: "[1/3] FROM docker.io/library/busybox", StartedAt: ts(t0), CompletedAt: ts(t0), Cached: true}),
		stepEvent(&kilnv1.Step{Digest: "sha256:b", Name: "[2/3] RUN echo hi", StartedAt: ts(t0)}),
		logEvent("sha256:b", 1, "hi\r\nthere\n"),
		stepEvent(&kilnv1.Step{Digest: "sha256:b", Name: "[2/3] RUN echo hi", StartedAt: ts(t0), CompletedAt: ts(t0.Add(2500 * time.Millisecond))}),
	}
	if end.Status == kilnv1.BuildStatus_BUILD_STATUS_FAILED {
		evs = append(evs,
			stepEvent(&kilnv1.Step{Digest: "sha256:c", Name: "[3/3] RUN false", StartedAt: ts(t0)}),
			logEvent("sha256:c", 2, "boom"),
			stepEvent(&kilnv1.Step{Digest: "sha256:c", Name: "[3/3] RUN false", StartedAt: ts(t0), CompletedAt: ts(t0.Add(time.Second)), Error: "process \"/bin/sh -c false\" did not complete successfully: exit code: 1"}),
		)
	}
	return append(evs, buildEvent(end))
}

const replayHead = `build b1: queued (2 ahead)
build b1: running
#1 [1/3] FROM docker.io/library/busybox
#1 CACHED
#2 [2/3] RUN echo hi
#2 hi
#2 there
#2 DONE 2.5s
`

func TestBuildsLogsFailedReplay(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.watchStreams = [][]*kilnv1.WatchBuildResponse{replay(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_FAILED, Error: "step [3/3] failed"})}
	var stdout, stderr bytes.Buffer
	code := Main([]string{"builds", "logs", "-f", "b1", "--api-url", f.url, "--token", "t"}, &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	want := replayHead + `#3 [3/3] RUN false
#3 boom
#3 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1
build b1: failed
`
	if stdout.String() != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), want)
	}
	if got := stderr.String(); got != "kiln: build b1 failed: step [3/3] failed\n" {
		t.Errorf("stderr = %q", got)
	}
	if len(f.watchReqs) != 1 || f.watchReqs[0].NoFollow || f.watchReqs[0].BuildId != "b1" {
		t.Errorf("WatchBuild requests: %v", f.watchReqs)
	}
}

func TestBuildsLogsSucceeded(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.watchStreams = [][]*kilnv1.WatchBuildResponse{replay(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED,
		ImageRefs: []string{"reg.example/p1:b1", "reg.example/p1:v1"}, ImageDigest: "sha256:feed"})}
	stdout, _, err := runKiln(t, f, "builds", "logs", "b1", "-f")
	if err != nil {
		t.Fatal(err)
	}
	want := replayHead + `build b1: succeeded
image: reg.example/p1:b1
image: reg.example/p1:v1
digest: sha256:feed
`
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
}

func TestBuildsLogsCanceledExitCode(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.watchStreams = [][]*kilnv1.WatchBuildResponse{{buildEvent(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_CANCELED, Error: "canceled by a user"})}}
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"builds", "logs", "b1", "--api-url", f.url, "--token", "t"}, &stdout, &stderr); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "build b1 was canceled: canceled by a user") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

func TestBuildsLogsNoFollowStillRunning(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.watchStreams = [][]*kilnv1.WatchBuildResponse{replay(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_PUSHING})}
	stdout, stderr, err := runKiln(t, f, "builds", "logs", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if want := replayHead + "build b1: pushing\n"; stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	if stderr != "build is still pushing; follow with -f\n" {
		t.Errorf("stderr = %q", stderr)
	}
	if !f.watchReqs[0].NoFollow {
		t.Error("without -f, WatchBuild must be asked not to follow")
	}
}

// A stream that breaks is opened again; the replay is not printed twice.
func TestBuildsLogsReconnects(t *testing.T) {
	f := newFakeSourceBuilds(t)
	full := replay(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED})
	f.watchStreams = [][]*kilnv1.WatchBuildResponse{full[:6], full}
	f.watchBreak = []bool{true}
	stdout, _, err := runKiln(t, f, "builds", "logs", "-f", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if want := replayHead + "build b1: succeeded\n"; stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	if len(f.watchReqs) != 2 {
		t.Errorf("%d WatchBuild calls, want 2", len(f.watchReqs))
	}
}

func TestBuildsLogsJSON(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.watchStreams = [][]*kilnv1.WatchBuildResponse{replay(&kilnv1.Build{BuildId: "b1", Status: kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED})}
	stdout, _, err := runKiln(t, f, "builds", "logs", "--json", "b1")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != len(f.watchStreams[0]) {
		t.Fatalf("%d lines for %d events:\n%s", len(lines), len(f.watchStreams[0]), stdout)
	}
	var ev kilnv1.WatchBuildResponse
	if err := protojson.Unmarshal([]byte(lines[5]), &ev); err != nil || ev.GetLog().GetMessage() != "hi\r\nthere\n" {
		t.Errorf("line 6 = %s (%v)", lines[5], err)
	}
}

func testBuilds(now time.Time) []*kilnv1.Build {
	return []*kilnv1.Build{
		{BuildId: "b3", ProjectId: "p1", Status: kilnv1.BuildStatus_BUILD_STATUS_QUEUED, Kind: "source", QueuePosition: 2,
			CreatedAt: ts(now.Add(-10 * time.Second))},
		{BuildId: "b2", ProjectId: "p1", CustomerId: "acme", Status: kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED, Kind: "source",
			CreatedAt: ts(now.Add(-3*time.Minute - 10*time.Second)), StartedAt: ts(now.Add(-3 * time.Minute)), FinishedAt: ts(now.Add(-3*time.Minute + 65*time.Second)),
			ImageRefs: []string{"reg.example/p1:b2", "reg.example/p1:v1"}, ImageDigest: "sha256:feed", Dockerfile: "Dockerfile", Platforms: []string{"linux/amd64", "linux/arm64"}},
		{BuildId: "b1", ProjectId: "p1", Status: kilnv1.BuildStatus_BUILD_STATUS_FAILED, Kind: "client", Error: "exit code: 1",
			CreatedAt: ts(now.Add(-50 * time.Hour)), StartedAt: ts(now.Add(-50 * time.Hour)), FinishedAt: ts(now.Add(-50*time.Hour + 1500*time.Millisecond))},
	}
}

func TestBuildsList(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.builds = testBuilds(time.Now())
	stdout, _, err := runKiln(t, f, "builds", "list", "--project", "p1")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 rows:\n%s", stdout)
	}
	for i, re := range []string{
		`^BUILD ID +STATUS +KIND +CREATED +DURATION +IMAGE$`,
		`^b3 +queued +source +10s ago +- +-$`,
		`^b2 +succeeded +source +3m ago +1m05s +reg.example/p1:b2$`,
		`^b1 +failed +client +2d ago +1.5s +-$`,
	} {
		if !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("line %d = %q, want %s", i, lines[i], re)
		}
	}
	if len(f.listReqs) != 3 || f.listReqs[0].GetProject().GetProjectId() != "p1" || f.listReqs[1].PageToken != "1" {
		t.Errorf("ListBuilds requests: %v", f.listReqs)
	}
}

func TestBuildsListLimitAndCustomer(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.builds = testBuilds(time.Now())
	stdout, _, err := runKiln(t, f, "builds", "list", "--customer", "acme", "--limit", "2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout, "[") || strings.Count(stdout, `"buildId"`) != 2 {
		t.Errorf("want a JSON array of 2 builds:\n%s", stdout)
	}
	for _, r := range f.listReqs {
		if r.GetProject().GetCustomerId() != "acme" || r.PageSize > 2 {
			t.Errorf("ListBuilds request %v", r)
		}
	}
	if len(f.listReqs) != 2 {
		t.Errorf("%d ListBuilds calls, want 2", len(f.listReqs))
	}
}

func TestBuildsGet(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.builds = testBuilds(time.Now())
	testInsights(time.Now()).mount(f.mux)
	stdout, _, err := runKiln(t, f, "builds", "get", "b2")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^build: +b2$`, `(?m)^url: +http://127\.0\.0\.1:\d+/builds/b2$`, `(?m)^status: +succeeded$`, `(?m)^kind: +source$`, `(?m)^project: +p1$`, `(?m)^customer: +acme$`,
		`(?m)^created: +\S+ \(3m ago\)$`, `(?m)^duration: +1m05s$`, `(?m)^platforms: +linux/amd64, linux/arm64$`,
		`(?m)^image: +reg.example/p1:b2\nimage: +reg.example/p1:v1$`, `(?m)^digest: +sha256:feed$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("output lacks %s:\n%s", re, stdout)
		}
	}
	if strings.Contains(stdout, "error:") || strings.Contains(stdout, "queue position") {
		t.Errorf("empty fields printed:\n%s", stdout)
	}

	stdout, _, err = runKiln(t, f, "builds", "get", "b3")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^queue position: +2 ahead$`).MatchString(stdout) {
		t.Errorf("queued build without its queue position:\n%s", stdout)
	}

	stdout, _, err = runKiln(t, f, "builds", "get", "b1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var b kilnv1.Build
	if err := protojson.Unmarshal([]byte(stdout), &b); err != nil || b.BuildId != "b1" || b.Error != "exit code: 1" {
		t.Errorf("--json = %s (%v)", stdout, err)
	}
}

func TestBuildsCancelAndRebuild(t *testing.T) {
	f := newFakeSourceBuilds(t)
	stdout, _, err := runKiln(t, f, "builds", "cancel", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if stdout != "build b1: canceled\n" || f.cancelReq.GetBuildId() != "b1" {
		t.Errorf("cancel: stdout %q, request %v", stdout, f.cancelReq)
	}
	stdout, stderr, err := runKiln(t, f, "builds", "rebuild", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if stdout != "b2\n" || f.rebuildReq.GetBuildId() != "b1" {
		t.Errorf("rebuild: stdout %q, request %v", stdout, f.rebuildReq)
	}
	if !strings.Contains(stderr, "kiln builds logs -f b2") {
		t.Errorf("rebuild: stderr %q", stderr)
	}
}

func TestBuildsHelpHasExamples(t *testing.T) {
	for _, c := range newBuildsCmd(&globals{}).Commands() {
		if c.Example == "" || c.Short == "" {
			t.Errorf("kiln builds %s: no Example or Short", c.Name())
		}
	}
}

func TestBuildsNotFound(t *testing.T) {
	f := newFakeSourceBuilds(t)
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"builds", "get", "nope", "--api-url", f.url, "--token", "t"}, &stdout, &stderr); code != 1 {
		t.Errorf("exit code %d", code)
	}
	if stderr.String() != "kiln: build nope not found\n" {
		t.Errorf("stderr = %q", stderr.String())
	}
}

// A step whose recorded end is before its start (two clocks, or status
// updates merged out of order) shows DONE 0.0s, never a negative time.
func TestBuildsLogsNoNegativeDuration(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	p := newBuildLogPrinter(&b, "b1")
	p.event(stepEvent(&kilnv1.Step{Digest: "sha256:x", Name: "exporting to image", StartedAt: ts(t0), CompletedAt: ts(t0.Add(-20 * time.Millisecond))}))
	if want := "#1 exporting to image\n#1 DONE 0.0s\n"; b.String() != want {
		t.Errorf("printed %q, want %q", b.String(), want)
	}
}
