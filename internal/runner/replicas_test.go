package runner

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
)

// Replicas here are Runners on one store, each with its own build
// service, as `kiln serve` replicas sharing a database are; the engine is
// a fake (fakeEngine) that records which replica ran what.

// fakeCluster is a replica's membership: its id, the store's locks, and
// whether it is fenced (nil: never).
type fakeCluster struct {
	self   string
	st     *store.SQL
	fenced *atomic.Bool
}

func (c fakeCluster) Self() string { return c.self }

func (c fakeCluster) Fenced() bool { return c.fenced != nil && c.fenced.Load() }

func (c fakeCluster) Exclusive(ctx context.Context, name string, fn func(context.Context) error) (bool, error) {
	held, unlock, ok, err := c.st.TryLock(ctx, name)
	if err != nil || !ok {
		return false, err
	}
	defer unlock()
	return true, fn(held)
}

// fakeEngine runs builds for every replica: each run is counted, and
// blocks until its build is released (or its context ends).
type fakeEngine struct {
	t *testing.T
	// hold, if set, decides which runs wait for release (else they take
	// a few milliseconds and succeed).
	hold func(replica string, b build.Build) bool

	mu       sync.Mutex
	runs     map[string][]string // build id → replicas that ran it, in order
	active   map[string]int      // project id → runs going on, all replicas
	maxPer   map[string]int      // project id → most runs going on at once
	release  map[string]chan struct{}
	canceled map[string]error // build id → the cause its context ended with
}

func newFakeEngine(t *testing.T) *fakeEngine {
	return &fakeEngine{t: t, runs: map[string][]string{}, active: map[string]int{}, maxPer: map[string]int{},
		release: map[string]chan struct{}{}, canceled: map[string]error{}}
}

func (f *fakeEngine) releaseCh(id string) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch, ok := f.release[id]
	if !ok {
		ch = make(chan struct{})
		f.release[id] = ch
	}
	return ch
}

// exec is a replica's Runner.exec.
func (f *fakeEngine) exec(replica string) func(context.Context, build.Build, string) build.Outcome {
	return func(ctx context.Context, b build.Build, _ string) build.Outcome {
		f.mu.Lock()
		f.runs[b.ID] = append(f.runs[b.ID], replica)
		f.active[b.ProjectID]++
		f.maxPer[b.ProjectID] = max(f.maxPer[b.ProjectID], f.active[b.ProjectID])
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			f.active[b.ProjectID]--
			f.mu.Unlock()
		}()
		wait := time.After(time.Duration(5+len(b.ID)%7) * time.Millisecond)
		if f.hold != nil && f.hold(replica, b) {
			wait = nil
		}
		select {
		case <-ctx.Done():
			f.mu.Lock()
			f.canceled[b.ID] = context.Cause(ctx)
			f.mu.Unlock()
			return build.Outcome{Result: build.Result{Status: build.Failed, Error: "solve canceled"}}
		case <-wait:
		case <-f.releaseCh(b.ID):
		}
		return build.Outcome{Result: build.Result{Status: build.Succeeded}, ImageDigest: "sha256:" + replica}
	}
}

func (f *fakeEngine) ran(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.runs[id]...)
}

// cluster is a store shared by replicas.
type cluster struct {
	t      *testing.T
	st     *store.SQL // the test's own connection to it
	open   func() *store.SQL
	blobs  *blob.Local
	dir    string
	engine *fakeEngine
	claims *claimCounter
	org    auth.Principal
}

// claimCounter counts successful StartSource claims (BuildStarted), over
// all replicas.
type claimCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *claimCounter) BuildCreated(build.Build) {}
func (c *claimCounter) BuildEnded(build.Build)   {}
func (c *claimCounter) BuildStarted(b build.Build) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[b.ID]++
}

func (c *claimCounter) of(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

func newCluster(t *testing.T, projects int) *cluster {
	st, blobs, dir := testStores(t)
	return setupCluster(t, st, func() *store.SQL { return st }, blobs, dir, projects)
}

// newPostgresCluster is newCluster on Postgres, each replica with a
// connection pool of its own, as replicas on several machines have.
func newPostgresCluster(t *testing.T, projects int) *cluster {
	ctx := context.Background()
	_, blobs, dir := testStores(t)
	url := pgtest.NewDatabase(t)
	open := func() *store.SQL {
		st, err := store.OpenPostgres(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	return setupCluster(t, open(), open, blobs, dir, projects)
}

func setupCluster(t *testing.T, st *store.SQL, open func() *store.SQL, blobs *blob.Local, dir string, projects int) *cluster {
	ctx := context.Background()
	st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"})
	for i := range projects {
		id := fmt.Sprintf("p%d", i)
		st.CreateProject(ctx, project.Project{ID: id, OrgID: "o1", Name: id})
	}
	return &cluster{t: t, st: st, open: open, blobs: blobs, dir: dir, engine: newFakeEngine(t), claims: &claimCounter{n: map[string]int{}}, org: auth.Principal{Kind: auth.TokenOrg, OrgID: "o1"}}
}

// passive makes a replica that answers the API but starts no build.
func passive(r *Runner) { r.closed = true }

// replica starts a runner named id on the shared store; opts change it
// before it starts.
func (c *cluster) replica(id string, cfg Config, opts ...func(*Runner)) *Runner {
	c.t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.WorkDir = filepath.Join(c.dir, "work-"+id)
	cfg.SecretsKey = []byte(strings.Repeat("k", 32))
	cfg.Logger = logger
	cfg.RegistryHost = func() string { return "127.0.0.1:1" }
	st := c.open()
	if cfg.Cluster == nil {
		cfg.Cluster = fakeCluster{self: id, st: st}
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = 50 * time.Millisecond
	}
	r, err := New(st, c.blobs, build.NewService(st, nil, nil, build.Config{Observer: c.claims}, logger), &project.Service{Store: st}, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	r.exec = c.engine.exec(id)
	for _, o := range opts {
		o(r)
	}
	if err := r.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Close(ctx)
	})
	return r
}

// create queues a source build of project through r, as Create does
// after its checks.
func (c *cluster) create(r *Runner, projectID string) build.Build {
	c.t.Helper()
	ctx := context.Background()
	proj, err := c.st.GetProject(ctx, projectID)
	if err != nil {
		c.t.Fatal(err)
	}
	spec := Spec{ContextKey: "ctx_x", Dockerfile: "Dockerfile", Platforms: []string{"linux/amd64"}}
	b, err := r.queue(ctx, c.org, proj, spec, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// waitFor polls the build until ok says so.
func (c *cluster) waitFor(id, what string, ok func(build.Build) bool) build.Build {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := c.st.GetBuild(context.Background(), id)
		if err == nil && ok(b) {
			return b
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("build %s: still not %s: %s %q on %q", id, what, b.Status, b.Error, b.Replica)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ended(b build.Build) bool { return b.Terminal() }

// 40 builds of 8 projects created through two replicas each run exactly
// once, on either replica, and a project never has more than
// MaxPerProject running over both: on SQLite (one process's store) and on
// Postgres (row and advisory locks between connection pools).
func TestReplicasRunEachBuildOnce(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testReplicasRunEachBuildOnce(t, newCluster(t, 8)) })
	t.Run("postgres", func(t *testing.T) { testReplicasRunEachBuildOnce(t, newPostgresCluster(t, 8)) })
}

func testReplicasRunEachBuildOnce(t *testing.T, c *cluster) {
	cfg := Config{MaxConcurrent: 3, MaxPerProject: 1}
	a, b := c.replica("a", cfg), c.replica("b", cfg)
	var ids []string
	for i := range 40 {
		through := a
		if i%2 == 1 {
			through = b
		}
		ids = append(ids, c.create(through, fmt.Sprintf("p%d", i%8)).ID)
	}
	on := map[string]int{}
	for _, id := range ids {
		got := c.waitFor(id, "ended", ended)
		runs := c.engine.ran(id)
		if got.Status != build.Succeeded || len(runs) != 1 || got.ImageDigest != "sha256:"+runs[0] || got.Replica != runs[0] || c.claims.of(id) != 1 {
			t.Errorf("build %s: %s %q on %q; claimed %d times, ran on %v: want once", id, got.Status, got.Error, got.Replica, c.claims.of(id), runs)
		}
		if len(runs) > 0 {
			on[runs[0]]++
		}
	}
	if on["a"] == 0 || on["b"] == 0 {
		t.Errorf("builds ran on %v: want both replicas used", on)
	}
	c.engine.mu.Lock()
	for pid, n := range c.engine.maxPer {
		if n > cfg.MaxPerProject {
			t.Errorf("project %s had %d builds running at once over the replicas, want at most %d", pid, n, cfg.MaxPerProject)
		}
	}
	c.engine.mu.Unlock()
	// Each replica's copy of the queue empties at its next sync.
	time.Sleep(3 * a.cfg.SyncInterval)
	for _, r := range []*Runner{a, b} {
		for i := range 8 {
			if q := r.Queued(fmt.Sprintf("p%d", i)); len(q) != 0 {
				t.Errorf("replica %s still has %v queued", r.self, q)
			}
		}
	}
}

// A build created through one replica runs on another with room.
func TestBuildCreatedThroughOneReplicaRunsOnAnother(t *testing.T) {
	c := newCluster(t, 1)
	c.engine.hold = func(string, build.Build) bool { return true }
	a, b := c.replica("a", Config{MaxConcurrent: 1}), c.replica("b", Config{MaxConcurrent: 1})
	first := c.create(a, "p0")
	c.waitFor(first.ID, "running on a", func(b build.Build) bool { return b.Status == build.Running && b.Replica == "a" })
	second := c.create(a, "p0") // a is full: b reads it from the store
	got := c.waitFor(second.ID, "running", func(b build.Build) bool { return b.Status == build.Running })
	if got.Replica != "b" {
		t.Errorf("second build runs on %q, want b", got.Replica)
	}
	if q := b.Queued("p0"); len(q) != 0 {
		t.Errorf("b still lists %v queued", q)
	}
	close(c.engine.releaseCh(first.ID))
	close(c.engine.releaseCh(second.ID))
	c.waitFor(first.ID, "ended", ended)
	c.waitFor(second.ID, "ended", ended)
}

// A build running on a, canceled through b, is canceled at once; a stops
// its solve within a sync, and its end does not replace the cancel. A
// queued build a knows of and b cancels never starts.
func TestCancelThroughAnotherReplica(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testCancelThroughAnotherReplica(t, newCluster(t, 1)) })
	t.Run("postgres", func(t *testing.T) { testCancelThroughAnotherReplica(t, newPostgresCluster(t, 1)) })
}

func testCancelThroughAnotherReplica(t *testing.T, c *cluster) {
	c.engine.hold = func(string, build.Build) bool { return true }
	a := c.replica("a", Config{MaxConcurrent: 1})
	running := c.create(a, "p0")
	c.waitFor(running.ID, "running on a", func(b build.Build) bool { return b.Status == build.Running && b.Replica == "a" })
	waiting := c.create(a, "p0")
	if q := a.Queued("p0"); len(q) != 1 || q[0] != waiting.ID {
		t.Fatalf("a's queue: %v", q)
	}
	b := c.replica("b", Config{}, passive)

	start := time.Now()
	got, err := b.Cancel(context.Background(), c.org, running.ID)
	if err != nil || got.Status != build.Canceled {
		t.Fatalf("cancel through b: %v %s", err, got.Status)
	}
	if _, err := b.Cancel(context.Background(), c.org, waiting.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.engine.mu.Lock()
		cause := c.engine.canceled[running.ID]
		c.engine.mu.Unlock()
		if cause != nil {
			if cause != errCanceled {
				t.Errorf("a's solve ended with %v, want the cancel", cause)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a never stopped the solve of the build canceled through b")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a took %s to stop the solve", d)
	}
	// a is free now: the canceled queued build must not start.
	time.Sleep(200 * time.Millisecond)
	if runs := c.engine.ran(waiting.ID); len(runs) != 0 {
		t.Errorf("a canceled queued build ran on %v", runs)
	}
	if q := a.Queued("p0"); len(q) != 0 {
		t.Errorf("a still lists %v queued", q)
	}
	for _, id := range []string{running.ID, waiting.ID} {
		if got := c.waitFor(id, "ended", ended); got.Status != build.Canceled {
			t.Errorf("build %s: %s %q, want canceled", id, got.Status, got.Error)
		}
	}
}

// A dead replica's running build is queued again (a note says so) and
// runs on a live one; if its replica dies under it again, it fails saying
// to rebuild. A replica taken for dead that still runs the build stops it,
// and its end is not recorded.
func TestDeadReplicasBuildsAreTakenOver(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testDeadReplicasBuildsAreTakenOver(t, newCluster(t, 1)) })
	t.Run("postgres", func(t *testing.T) { testDeadReplicasBuildsAreTakenOver(t, newPostgresCluster(t, 1)) })
}

func testDeadReplicasBuildsAreTakenOver(t *testing.T, c *cluster) {
	ctx := context.Background()
	c.engine.hold = func(string, build.Build) bool { return true }
	a := c.replica("a", Config{})
	bd := c.create(a, "p0")
	c.waitFor(bd.ID, "running on a", func(b build.Build) bool { return b.Status == build.Running && b.Replica == "a" })

	// a stops beating (cut off, say) and b settles it: b runs the build.
	b := c.replica("b", Config{})
	if err := b.SettleDead(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	c.waitFor(bd.ID, "running on b", func(x build.Build) bool { return x.Status == build.Running && x.Replica == "b" })
	logs, _ := c.st.ListBuildLogs(ctx, bd.ID, 0, 100)
	if len(logs) == 0 || !strings.Contains(logs[0].Message, "restarted: replica a stopped") {
		t.Errorf("no restart note in the log: %+v", logs)
	}
	// a's sync stops its own run, whose end changes nothing.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.engine.mu.Lock()
		cause := c.engine.canceled[bd.ID]
		c.engine.mu.Unlock()
		if cause == errTakenOver {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's run was not stopped as taken over: %v", cause)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if x, _ := c.st.GetBuild(ctx, bd.ID); x.Status != build.Running || x.Replica != "b" {
		t.Errorf("a's end was recorded: %s %q on %q", x.Status, x.Error, x.Replica)
	}
	close(c.engine.releaseCh(bd.ID))
	got := c.waitFor(bd.ID, "ended", ended)
	if got.Status != build.Succeeded || got.Replica != "b" || got.ImageDigest != "sha256:b" {
		t.Errorf("taken-over build: %s %q on %q digest %s", got.Status, got.Error, got.Replica, got.ImageDigest)
	}
	if runs := c.engine.ran(bd.ID); strings.Join(runs, ",") != "a,b" {
		t.Errorf("runs %v, want a then b", runs)
	}
	time.Sleep(100 * time.Millisecond)
	if again, _ := c.st.GetBuild(ctx, bd.ID); again.Status != build.Succeeded || again.ImageDigest != "sha256:b" {
		t.Errorf("a's late end replaced b's: %s %s", again.Status, again.ImageDigest)
	}

}

// A build whose replica dies under it a second time fails, saying to
// rebuild: it may be what kills replicas.
func TestBuildWhoseReplicaDiesTwiceFails(t *testing.T) {
	c := newCluster(t, 1)
	ctx := context.Background()
	live := c.replica("live", Config{}, passive)
	proj, _ := c.st.GetProject(ctx, "p0")
	bd, err := live.builds.CreateSource(ctx, c.org, proj, build.NewID(), Spec{ContextKey: "ctx_x"}.encode(), "")
	if err != nil {
		t.Fatal(err)
	}
	claim := func(replica string) {
		if _, ok, err := live.builds.StartSource(ctx, bd.ID, replica); !ok || err != nil {
			t.Fatalf("claim for %s: %v %v", replica, ok, err)
		}
	}
	claim("x1")
	if err := live.SettleDead(ctx, "x1"); err != nil {
		t.Fatal(err)
	}
	claim("x2")
	if err := live.SettleDead(ctx, "x2"); err != nil {
		t.Fatal(err)
	}
	got, _ := c.st.GetBuild(ctx, bd.ID)
	if got.Status != build.Failed || !strings.Contains(got.Error, "restarted once already") || !strings.Contains(got.Error, "RebuildBuild") {
		t.Errorf("build whose replica died twice: %s %q", got.Status, got.Error)
	}
}

// A fenced replica (it has not beaten for so long that the others may take
// it for dead) claims nothing until it beats again.
func TestFencedReplicaClaimsNothing(t *testing.T) {
	c := newCluster(t, 1)
	fenced := &atomic.Bool{}
	fenced.Store(true)
	a := c.replica("a", Config{Cluster: fakeCluster{self: "a", st: c.open(), fenced: fenced}})
	bd := c.create(a, "p0")
	time.Sleep(300 * time.Millisecond) // several syncs
	if got, _ := c.st.GetBuild(context.Background(), bd.ID); got.Status != build.Queued {
		t.Fatalf("a fenced replica claimed a build: %s on %q", got.Status, got.Replica)
	}
	fenced.Store(false)
	got := c.waitFor(bd.ID, "ended", ended)
	if got.Status != build.Succeeded || got.Replica != "a" {
		t.Errorf("after the fence: %s %q on %q", got.Status, got.Error, got.Replica)
	}
}

// A source build the store has running on this replica, with no job here
// (its end could not be recorded, say), is queued again and runs; lost a
// second time, it fails.
func TestOrphanedSourceBuildIsQueuedAgain(t *testing.T) {
	c := newCluster(t, 1)
	ctx := context.Background()
	c.engine.hold = func(string, build.Build) bool { return false }
	a := c.replica("a", Config{})
	proj, _ := c.st.GetProject(ctx, "p0")
	orphan := func() build.Build {
		t.Helper()
		a.mu.Lock() // no dispatch while the orphan is made
		defer a.mu.Unlock()
		bd, err := a.builds.CreateSource(ctx, c.org, proj, build.NewID(), Spec{ContextKey: "ctx_x"}.encode(), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := a.builds.StartSource(ctx, bd.ID, "a"); !ok || err != nil {
			t.Fatalf("claim: %v %v", ok, err)
		}
		return bd
	}
	bd := orphan()
	got := c.waitFor(bd.ID, "ended", ended)
	if got.Status != build.Succeeded || got.Replica != "a" {
		t.Fatalf("orphan after its requeue: %s %q on %q", got.Status, got.Error, got.Replica)
	}
	logs, _ := c.st.ListBuildLogs(ctx, bd.ID, 0, 100)
	if len(logs) == 0 || !strings.Contains(logs[0].Message, "lost track of this build") {
		t.Errorf("no restart note in the log: %+v", logs)
	}

	// One lost twice: a requeued build carries its note as its error.
	a.mu.Lock()
	bd, err := a.builds.CreateSource(ctx, c.org, proj, build.NewID(), Spec{ContextKey: "ctx_x"}.encode(), "")
	if err == nil {
		_, _, err = a.builds.StartSource(ctx, bd.ID, "a")
	}
	if err == nil {
		_, _, err = a.builds.RequeueSource(ctx, bd.ID, "a", "restarted: once already")
	}
	if err == nil {
		_, _, err = a.builds.StartSource(ctx, bd.ID, "a")
	}
	a.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	got = c.waitFor(bd.ID, "ended", ended)
	if got.Status != build.Failed || !strings.Contains(got.Error, "restarted once already") {
		t.Errorf("orphan lost twice: %s %q", got.Status, got.Error)
	}
}

// Start fails this replica's interrupted builds (and those from before
// replicas), never another replica's.
func TestStartFailsOnlyItsOwnInterruptedBuilds(t *testing.T) {
	c := newCluster(t, 1)
	ctx := context.Background()
	now := time.Now().UTC()
	for _, id := range []string{"a", "b", ""} {
		c.st.CreateBuild(ctx, build.Build{ID: "on-" + id, ProjectID: "p0", OrgID: "o1", Status: build.Running, Kind: build.KindSource,
			CreatedAt: now, StartedAt: now, Replica: id})
	}
	c.engine.hold = func(string, build.Build) bool { return true }
	c.replica("a", Config{})
	for id, want := range map[string]build.Status{"on-a": build.Failed, "on-": build.Failed, "on-b": build.Running} {
		if b, _ := c.st.GetBuild(ctx, id); b.Status != want {
			t.Errorf("%s after a's restart: %s, want %s", id, b.Status, want)
		}
	}
}

// A watcher on one replica follows a build running on another: its steps
// and log lines as they are stored, then its end.
func TestWatchAcrossReplicas(t *testing.T) {
	c := newCluster(t, 1)
	ctx := context.Background()
	c.engine.hold = func(string, build.Build) bool { return true }
	a := c.replica("a", Config{})
	b := c.replica("b", Config{}, passive)
	bd := c.create(a, "p0")
	c.waitFor(bd.ID, "running on a", func(x build.Build) bool { return x.Status == build.Running && x.Replica == "a" })

	events := make(chan Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, c.org, bd.ID, true, func(e Event) error { events <- e; return nil })
	}()
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := a.builds.StoreSteps(ctx, bd.ID, []build.Step{{Digest: "d1", Name: "RUN one", StartedAt: now}},
		[]build.LogLine{{Digest: "d1", At: now, Message: "hello\n"}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < 3 {
		select {
		case e := <-events:
			switch {
			case e.Build != nil:
				got = append(got, "build "+string(e.Build.Status))
			case e.Step != nil:
				got = append(got, "step "+e.Step.Name)
			case e.Log != nil:
				got = append(got, "log "+strings.TrimSpace(e.Log.Message))
			}
		case <-timeout:
			t.Fatalf("watch through b saw %v of a's running build", got)
		}
	}
	if strings.Join(got, "|") != "build running|step RUN one|log hello" {
		t.Errorf("live events %v", got)
	}
	close(c.engine.releaseCh(bd.ID))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not end with the build")
	}
	var last *build.Build
	for len(events) > 0 {
		if e := <-events; e.Build != nil {
			last = e.Build
		}
	}
	if last == nil || last.Status != build.Succeeded {
		t.Errorf("the watch's last build event: %+v", last)
	}
}
