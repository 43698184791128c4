package follow_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	controlapi "github.com/moby/buildkit/api/services/control"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/follow"
)

// builder is a fake buildkitd: Status of a ref answers NotFound `unknown`
// times (the solve has not started), then streams the ref's updates.
type builder struct {
	controlapi.UnimplementedControlServer
	mu      sync.Mutex
	unknown int
	updates map[string][]*controlapi.StatusResponse
}

func (b *builder) ListWorkers(context.Context, *controlapi.ListWorkersRequest) (*controlapi.ListWorkersResponse, error) {
	return &controlapi.ListWorkersResponse{}, nil
}

func (b *builder) Status(req *controlapi.StatusRequest, st controlapi.Control_StatusServer) error {
	b.mu.Lock()
	if b.unknown > 0 {
		b.unknown--
		b.mu.Unlock()
		return status.Errorf(codes.NotFound, "no such job %s", req.Ref)
	}
	ups := b.updates[req.Ref]
	b.mu.Unlock()
	for _, u := range ups {
		if err := st.Send(u); err != nil {
			return err
		}
	}
	return nil
}

func serve(t *testing.T, b *builder) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bk.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	controlapi.RegisterControlServer(gs, b)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return sock
}

// sink is the store: what the follower stored, per build.
type sink struct {
	mu    sync.Mutex
	steps map[string]build.Step
	logs  []build.LogLine
}

func (s *sink) store(_ context.Context, _ string, steps []build.Step, logs []build.LogLine) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range steps {
		s.steps[st.Digest] = build.MergeStep(s.steps[st.Digest], st)
	}
	s.logs = append(s.logs, logs...)
	return nil
}

func (s *sink) snapshot() (map[string]build.Step, []build.LogLine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]build.Step{}
	for k, v := range s.steps {
		m[k] = v
	}
	return m, append([]build.LogLine(nil), s.logs...)
}

func TestFollowerStoresTheBuildersStepsWithinTheLogBudget(t *testing.T) {
	t0 := time.Unix(1000, 0).UTC()
	b := &builder{unknown: 2, updates: map[string][]*controlapi.StatusResponse{"ref1": {
		{Vertexes: []*controlapi.Vertex{{Digest: "sha256:a", Name: "[1/2] FROM busybox", Cached: true, Started: timestamppb.New(t0), Completed: timestamppb.New(t0)}}},
		{Vertexes: []*controlapi.Vertex{{Digest: "sha256:b", Name: "[2/2] RUN make", Started: timestamppb.New(t0)}},
			Logs: []*controlapi.VertexLog{{Vertex: "sha256:b", Timestamp: timestamppb.New(t0), Msg: []byte("0123456789")}}},
		{Logs: []*controlapi.VertexLog{{Vertex: "sha256:b", Timestamp: timestamppb.New(t0), Msg: []byte("abcdefghij")}}},
		{Vertexes: []*controlapi.Vertex{{Digest: "sha256:b", Completed: timestamppb.New(t0.Add(time.Second))}},
			Logs: []*controlapi.VertexLog{{Vertex: "sha256:b", Timestamp: timestamppb.New(t0), Msg: []byte("over the budget")}}},
	}}}
	sock := serve(t, b)
	out := &sink{steps: map[string]build.Step{}}
	f, err := follow.New(follow.Config{Lookup: func(string) (string, engine.Connection, bool) {
		return "p", engine.Connection{Endpoint: "unix://" + sock}, true
	},
		Store: out.store, MaxLogBytes: 25, Grace: 50 * time.Millisecond, Flush: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Solve("b1", "p", "p-amd64.builder.kiln", "ref1", "")
	if !f.Following("b1") {
		t.Fatal("a build is followed from its first Solve")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		steps, logs := out.snapshot()
		if len(logs) == 3 && !steps["sha256:b"].CompletedAt.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored steps %+v, logs %+v", steps, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	steps, logs := out.snapshot()
	if a := steps["sha256:a"]; !a.Cached || a.Name != "[1/2] FROM busybox" {
		t.Errorf("step a = %+v", a)
	}
	if r := steps["sha256:b"]; r.Name != "[2/2] RUN make" || !r.CompletedAt.Equal(t0.Add(time.Second)) {
		t.Errorf("step b = %+v (a later update carried only the completion)", r)
	}
	if logs[0].Message != "0123456789" || logs[1].Message != "abcdefghij" || !strings.HasPrefix(logs[2].Message, "[kiln] log truncated") {
		t.Errorf("logs = %+v; want two lines, then one truncation marker", logs)
	}
	// The same ref again (a retried Solve call) is not followed twice.
	f.Solve("b1", "p", "p-amd64.builder.kiln", "ref1", "")
	f.Ended("b1")
	for deadline := time.Now().Add(5 * time.Second); f.Following("b1"); {
		if time.Now().After(deadline) {
			t.Fatal("an ended build is still followed after the grace")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, again := out.snapshot(); len(again) != 3 {
		t.Errorf("logs after a repeated Solve = %d lines; want 3", len(again))
	}
}

// A builder that cannot be reached leaves the client's report as the
// build's record: the build is not Following.
func TestFollowerGivesUpOnAnUnreachableBuilder(t *testing.T) {
	out := &sink{steps: map[string]build.Step{}}
	f, err := follow.New(follow.Config{Lookup: func(string) (string, engine.Connection, bool) {
		return "p", engine.Connection{Endpoint: "unix://" + filepath.Join(t.TempDir(), "none.sock")}, true
	},
		Store: out.store})
	if err != nil {
		t.Fatal(err)
	}
	f.Solve("b1", "p", "p-amd64.builder.kiln", "ref1", "")
	deadline := time.Now().Add(20 * time.Second)
	for f.Following("b1") {
		if time.Now().After(deadline) {
			t.Fatal("still following a build whose builder cannot be reached")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.Close()
	f.Solve("b2", "p", "p-amd64.builder.kiln", "ref2", "") // after Close: ignored, no goroutine
	if f.Following("b2") {
		t.Error("a closed follower follows a new build")
	}
}

// Step names read as kiln's display: a labeled solve's (a bake target's)
// carry its label, and a label whose solves run on two platforms carries
// each one's platform too, also for the steps stored before the second
// solve began.
func TestFollowerNamesStepsWithTheirLabelAndPlatform(t *testing.T) {
	t0 := time.Unix(1000, 0).UTC()
	run := func(d, name string) []*controlapi.StatusResponse {
		return []*controlapi.StatusResponse{{Vertexes: []*controlapi.Vertex{{Digest: d, Name: name, Started: timestamppb.New(t0), Completed: timestamppb.New(t0)}}}}
	}
	b := &builder{updates: map[string][]*controlapi.StatusResponse{
		"amd": run("sha256:a", "[2/2] RUN uname -m"), "arm": run("sha256:b", "[2/2] RUN uname -m"),
		"worker": run("sha256:w", "[1/1] RUN work"), "solo": run("sha256:c", "[1/1] RUN true"),
	}}
	sock := serve(t, b)
	out := &sink{steps: map[string]build.Step{}}
	platforms := map[string]string{"p-amd64.builder.kiln": "linux/amd64", "p-arm64.builder.kiln": "linux/arm64"}
	f, err := follow.New(follow.Config{Lookup: func(string) (string, engine.Connection, bool) {
		return "p", engine.Connection{Endpoint: "unix://" + sock}, true
	},
		Platform: func(n string) string { return platforms[n] }, Store: out.store, Grace: 50 * time.Millisecond, Flush: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wait := func(what string, ok func(map[string]build.Step) bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			steps, _ := out.snapshot()
			if ok(steps) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: stored %+v", what, steps)
			}
		}
	}
	f.Solve("solo", "p", "p-amd64.builder.kiln", "solo", "")
	wait("an unlabeled one-platform build", func(s map[string]build.Step) bool { return s["sha256:c"].Name == "[1/1] RUN true" })

	f.Solve("b1", "p", "p-amd64.builder.kiln", "amd", "app")
	f.Solve("b1", "p", "p-amd64.builder.kiln", "worker", "worker")
	wait("the first platform's step", func(s map[string]build.Step) bool { return s["sha256:a"].Name == "[app 2/2] RUN uname -m" })
	f.Solve("b1", "p", "p-arm64.builder.kiln", "arm", "app")
	wait("both platforms' steps, named with them", func(s map[string]build.Step) bool {
		return s["sha256:a"].Name == "[app linux/amd64 2/2] RUN uname -m" && s["sha256:b"].Name == "[app linux/arm64 2/2] RUN uname -m"
	})
	wait("the one-platform target", func(s map[string]build.Step) bool { return s["sha256:w"].Name == "[worker 1/1] RUN work" })
	if s, _ := out.snapshot(); s["sha256:c"].Name != "[1/1] RUN true" {
		t.Errorf("another build's step was renamed: %+v", s["sha256:c"])
	}
}

// A vertex a second solve of the build reports again (a bake target solved
// once more to export it as another's context) stays the first solve's
// step: counted once, and not marked cached by the second solve's hit.
func TestFollowerKeepsAStepWithTheFirstSolveThatRanIt(t *testing.T) {
	t0 := time.Unix(1000, 0).UTC()
	b := &builder{updates: map[string][]*controlapi.StatusResponse{
		"main": {{Vertexes: []*controlapi.Vertex{{Digest: "sha256:r", Name: "[2/2] RUN make", Started: timestamppb.New(t0), Completed: timestamppb.New(t0.Add(time.Second))}},
			Logs: []*controlapi.VertexLog{{Vertex: "sha256:r", Timestamp: timestamppb.New(t0), Msg: []byte("made\n")}}}},
		"again": {{Vertexes: []*controlapi.Vertex{{Digest: "sha256:r", Name: "[2/2] RUN make", Cached: true, Started: timestamppb.New(t0.Add(2 * time.Second)), Completed: timestamppb.New(t0.Add(2 * time.Second))},
			{Digest: "sha256:x", Name: "exporting to oci image format", Started: timestamppb.New(t0.Add(2 * time.Second))}}}},
	}}
	sock := serve(t, b)
	out := &sink{steps: map[string]build.Step{}}
	f, err := follow.New(follow.Config{Lookup: func(string) (string, engine.Connection, bool) {
		return "p", engine.Connection{Endpoint: "unix://" + sock}, true
	},
		Store: out.store, Grace: 50 * time.Millisecond, Flush: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Solve("b1", "p", "p-amd64.builder.kiln", "main", "")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if s, _ := out.snapshot(); !s["sha256:r"].CompletedAt.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first solve's step was not stored")
		}
	}
	f.Solve("b1", "p", "p-amd64.builder.kiln", "again", "")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if s, _ := out.snapshot(); s["sha256:x"].Name != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second solve's own step was not stored")
		}
	}
	s, logs := out.snapshot()
	if r := s["sha256:r"]; r.Cached || !r.StartedAt.Equal(t0) {
		t.Errorf("RUN step = %+v; want the first solve's run, not cached", r)
	}
	if len(logs) != 1 {
		t.Errorf("logs = %+v; want the first solve's line once", logs)
	}
}

// A Follower missing a required dependency is a caller's mistake, of kind
// invalid, not an untyped failure.
func TestNewRequiresLookupAndStore(t *testing.T) {
	if _, err := follow.New(follow.Config{}); !errdefs.IsInvalid(err) {
		t.Fatalf("New without Lookup and Store: %v; want an invalid-argument error", err)
	}
}

// From the attacker's side: a client's Solve names any ref it likes. A ref
// that is not of BuildKit's form (huge, or carrying a line break into the
// logs) is not followed: no goroutine, no dial, nothing kept. A build's
// refs are followed up to a bound that a large bake stays under.
func TestFollowerFollowsOnlyBuildKitRefsUpToABound(t *testing.T) {
	var mu sync.Mutex
	lookups := 0
	f, err := follow.New(follow.Config{
		Lookup: func(string) (string, engine.Connection, bool) {
			mu.Lock()
			defer mu.Unlock()
			lookups++
			return "", engine.Connection{}, false // builder gone: the solve is given up at once
		},
		Store: (&sink{steps: map[string]build.Step{}}).store})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"", strings.Repeat("a", 65), strings.Repeat("x", 32<<20), "ref\nlevel=ERROR msg=forged", "REF1", "ref/../1", "réf"} {
		f.Solve("hostile", "p", "p-amd64.builder.kiln", ref, "")
	}
	if f.Following("hostile") {
		t.Error("a build is followed after Solves with refs not of BuildKit's form")
	}
	// A bake of 600 targets on two platforms is not cut short, and a
	// build's refs past the bound are not followed.
	for i := range 1200 {
		f.Solve("bake", "p", "p-amd64.builder.kiln", fmt.Sprintf("%025d", i), "")
	}
	f.Close()
	if lookups != 1024 {
		t.Errorf("%d solves followed; want the valid refs of the bake up to 1024 and none of the others", lookups)
	}
}

// From the attacker's side: a Solve that comes after the build ended (its
// connection outlived the end) is not followed, before or after the
// grace: the build would be followed again and never forgotten.
func TestFollowerIgnoresSolvesOfAnEndedBuild(t *testing.T) {
	var mu sync.Mutex
	lookups := map[string]int{}
	f, err := follow.New(follow.Config{
		Lookup: func(name string) (string, engine.Connection, bool) {
			mu.Lock()
			defer mu.Unlock()
			lookups[name]++
			return "", engine.Connection{}, false
		},
		Store: (&sink{steps: map[string]build.Step{}}).store, Grace: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Ended before any Solve, then a Solve.
	f.Ended("b1")
	f.Solve("b1", "p", "late", "ref1", "")
	// Followed, ended, a Solve within the grace and one after it.
	f.Solve("b2", "p", "first", "ref1", "")
	f.Ended("b2")
	f.Solve("b2", "p", "late", "ref2", "")
	time.Sleep(100 * time.Millisecond)
	f.Solve("b2", "p", "late", "ref3", "")
	if f.Following("b1") || f.Following("b2") {
		t.Error("an ended build is followed")
	}
	f.Close()
	if lookups["late"] != 0 || lookups["first"] != 1 {
		t.Errorf("solves followed per builder: %v; want only b2's before it ended", lookups)
	}
}

// Skip is asked once per build, not once per solve: a bake of hundreds of
// targets is one store lookup.
func TestFollowerAsksSkipOncePerBuild(t *testing.T) {
	var mu sync.Mutex
	asked := map[string]int{}
	f, err := follow.New(follow.Config{
		Lookup: func(string) (string, engine.Connection, bool) { return "", engine.Connection{}, false },
		Store:  (&sink{steps: map[string]build.Step{}}).store,
		Skip: func(_ context.Context, buildID string) bool {
			mu.Lock()
			defer mu.Unlock()
			asked[buildID]++
			return buildID == "source"
		}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		f.Solve("bake", "p", "p-amd64.builder.kiln", fmt.Sprintf("ref%d", i), "")
		f.Solve("source", "p", "p-amd64.builder.kiln", fmt.Sprintf("ref%d", i), "")
	}
	f.Close()
	if asked["bake"] != 1 || asked["source"] != 1 {
		t.Errorf("Skip asked %v; want once per build", asked)
	}
}
