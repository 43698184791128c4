package build_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// fakeCluster places project pa's builders on replica "b" and every other
// project's on the asking replica; replica "a" always gets the store's
// locks.
type fakeCluster struct{ self string }

func (c fakeCluster) Exclusive(ctx context.Context, _ string, fn func(context.Context) error) (bool, error) {
	if c.self != "a" {
		return false, nil
	}
	return true, fn(ctx)
}

func (c fakeCluster) Self() string         { return c.self }
func (c fakeCluster) Alive(id string) bool { return true }
func (c fakeCluster) PlaceBuilder(_ context.Context, projectID, platform string) (string, error) {
	if projectID == "pa" {
		return "b", nil
	}
	return c.self, nil
}

// replicas is two replicas, a and b, of one store, each with its own
// fleet; a asks b for the builders placed there.
type replicas struct {
	a, b env
	// revokedOnB: the builds whose connections b cut.
	mu         sync.Mutex
	revokedOnB []string
	activeOnB  func(buildID string) bool
}

func (r *replicas) revoked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.revokedOnB)
}

func setupReplicas(t *testing.T, timeout time.Duration) *replicas {
	t.Helper()
	r := &replicas{activeOnB: func(string) bool { return false }}
	r.b = setupWith(t, build.Config{HealthTimeout: timeout, Cluster: fakeCluster{"b"},
		GatewayAddr: func() string { return "tcp://b:1" },
		Active:      func(id string) bool { return r.activeOnB(id) },
		Revoke: func(id string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.revokedOnB = append(r.revokedOnB, id)
		}})
	r.a = r.b
	r.a.fleet = &fakeFleet{pending: 1, leases: map[string]bool{}}
	r.a.svc = build.NewService(r.b.st, r.a.fleet, fakeCerts{}, build.Config{HealthTimeout: timeout, Cluster: fakeCluster{"a"},
		GatewayAddr: func() string { return "tcp://a:1" },
		Owners:      ownersOf{r}}, slog.New(slog.DiscardHandler))
	return r
}

// ownersOf reaches replica b as peer calls would.
type ownersOf struct{ r *replicas }

func (o ownersOf) Connect(ctx context.Context, owner, buildID, platform string) (build.Connection, error) {
	if owner != "b" {
		return build.Connection{}, fmt.Errorf("replica %s: %w", owner, errdefs.ErrUnavailable)
	}
	return o.r.b.svc.ConnectHere(ctx, buildID, platform)
}

func (o ownersOf) Release(ctx context.Context, owner, buildID, platform string) error {
	if owner != "b" {
		return fmt.Errorf("replica %s: %w", owner, errdefs.ErrUnavailable)
	}
	return o.r.b.svc.ReleaseHere(ctx, buildID, platform)
}

// connectThroughA creates a build of project and connects it through
// replica a until its builder is ready.
func (r *replicas) connectThroughA(t *testing.T, project string) (build.Build, build.Connection) {
	t.Helper()
	ctx := context.Background()
	b, secret, err := r.a.svc.Create(ctx, r.a.org, project, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := principalOf(t, r.a.st, secret)
	for range 3 {
		c, err := r.a.svc.Connect(ctx, p, b.ID, "amd64")
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		if c.Ready {
			got, _ := r.a.st.GetBuild(ctx, b.ID)
			return got, c
		}
	}
	t.Fatal("the builder never got ready")
	return build.Build{}, build.Connection{}
}

// A build connected through a replica that does not run the project's
// builder gets the owner's builder: the owner holds the lease, the client
// dials the owner's gateway, and the build records the owner as its
// replica.
func TestConnectThroughAnotherReplicaUsesTheOwnersBuilder(t *testing.T) {
	r := setupReplicas(t, time.Hour)
	b, c := r.connectThroughA(t, "pa")
	if c.Addr != "tcp://b:1" || c.CertPEM != "cert:pa" {
		t.Errorf("connection = %+v; want b's gateway and a certificate for pa", c)
	}
	if r.b.fleet.leaseCount() != 1 || r.a.fleet.leaseCount() != 0 {
		t.Errorf("leases: a %d, b %d; want the owner b's only", r.a.fleet.leaseCount(), r.b.fleet.leaseCount())
	}
	if b.Replica != "b" || b.Platforms != "linux/amd64" {
		t.Errorf("build replica %q platforms %q; want b, linux/amd64", b.Replica, b.Platforms)
	}
	// Released early through a, the lease goes on b.
	if err := r.a.svc.Release(context.Background(), r.a.org, b.ID, "amd64"); err != nil {
		t.Fatal(err)
	}
	if r.b.fleet.leaseCount() != 0 {
		t.Errorf("b's leases after a release through a: %d; want 0", r.b.fleet.leaseCount())
	}
	// A project placed on a itself stays on a.
	own, c := r.connectThroughA(t, "pb")
	if c.Addr != "tcp://a:1" || own.Replica != "a" || r.a.fleet.leaseCount() != 1 {
		t.Errorf("own build: addr %s replica %q a's leases %d; want a's", c.Addr, own.Replica, r.a.fleet.leaseCount())
	}
}

// A replica starting (or stopping) settles only the builds whose builder
// it held, and those recorded before replicas were.
func TestReconcileSettlesOnlyThisReplicasBuilds(t *testing.T) {
	r := setupReplicas(t, time.Hour)
	ctx := context.Background()
	onB, _ := r.connectThroughA(t, "pa")
	onA, _ := r.connectThroughA(t, "pb")
	// A build leased before replicas were recorded (no cluster: Replica "").
	legacy := setupWith(t, build.Config{HealthTimeout: time.Hour})
	legacy.st, legacy.svc = r.a.st, build.NewService(r.a.st, legacy.fleet, fakeCerts{}, build.Config{HealthTimeout: time.Hour}, slog.New(slog.DiscardHandler))
	old, secret, _ := legacy.svc.Create(ctx, r.a.org, "pb", 1, nil)
	legacy.svc.Connect(ctx, principalOf(t, r.a.st, secret), old.ID, "amd64")
	legacy.svc.Connect(ctx, principalOf(t, r.a.st, secret), old.ID, "amd64")
	if got, _ := r.a.st.GetBuild(ctx, old.ID); got.Replica != "" || got.Platforms == "" {
		t.Fatalf("legacy build: replica %q platforms %q", got.Replica, got.Platforms)
	}

	r.a = r.a.restart(t, build.Config{HealthTimeout: time.Hour, Cluster: fakeCluster{"a"}})
	status := func(id string) build.Status { got, _ := r.a.st.GetBuild(ctx, id); return got.Status }
	if status(onB.ID) != build.Running {
		t.Errorf("b's build after a restarted: %s; want running (b still holds its builder)", status(onB.ID))
	}
	if status(onA.ID) != build.Failed || status(old.ID) != build.Failed {
		t.Errorf("a's builds after a restarted: %s, legacy %s; want failed", status(onA.ID), status(old.ID))
	}
	if err := r.b.svc.Stopped(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.a.st.GetBuild(ctx, onB.ID); got.Status != build.Failed || got.Error != build.StoppedError {
		t.Errorf("b's build after b stopped: %s %q; want failed: %q", got.Status, got.Error, build.StoppedError)
	}
}

// When a replica dies, the survivor's hook fails the builds whose builder
// it held, and only those.
func TestReplicaDeadFailsItsBuilds(t *testing.T) {
	r := setupReplicas(t, time.Hour)
	ctx := context.Background()
	onB, _ := r.connectThroughA(t, "pa")
	onA, _ := r.connectThroughA(t, "pb")
	waiting, _, _ := r.a.svc.Create(ctx, r.a.org, "pa", 1, nil) // no builder yet
	if err := r.a.svc.ReplicaDead(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	got, _ := r.a.st.GetBuild(ctx, onB.ID)
	if want := fmt.Sprintf(build.DeadReplicaError, "b"); got.Status != build.Failed || got.Error != want {
		t.Errorf("b's build: %s %q; want failed: %q", got.Status, got.Error, want)
	}
	for _, id := range []string{onA.ID, waiting.ID} {
		if got, _ := r.a.st.GetBuild(ctx, id); got.Status != build.Running {
			t.Errorf("build %s: %s; want running", id, got.Status)
		}
	}
}

// A build finished through another replica releases its lease on the
// owner once the owner's follower sees the end in the store, and its
// connections there are cut.
func TestLeaseReleasedWhenTheBuildEndedElsewhere(t *testing.T) {
	r := setupReplicas(t, time.Hour)
	ctx := context.Background()
	b, _ := r.connectThroughA(t, "pa")
	running, _ := r.connectThroughA(t, "pa")
	if err := r.a.svc.Finish(ctx, r.a.org, b.ID, build.Result{Status: build.Succeeded}); err != nil {
		t.Fatal(err)
	}
	if r.b.fleet.leaseCount() != 2 {
		t.Fatalf("b's leases before its follower ran: %d; want 2", r.b.fleet.leaseCount())
	}
	r.b.svc.ReleaseEnded(ctx)
	if r.b.fleet.leaseCount() != 1 || !r.b.fleet.leases["pa/linux/amd64/"+running.ID] {
		t.Errorf("b's leases after its follower ran: %v; want the running build's only", r.b.fleet.leases)
	}
	if got := r.revoked(); !slices.Equal(got, []string{b.ID}) {
		t.Errorf("b cut the connections of %v; want [%s]", got, b.ID)
	}
	// Run follows on its own, within about a second.
	if err := r.a.svc.Finish(ctx, r.a.org, running.ID, build.Result{Status: build.Failed, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.b.svc.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for r.b.fleet.leaseCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("b still holds the lease of a build finished through a, 5s later")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A build whose client talks to the owner's gateway is not canceled by
// another replica's health reaper, which does not see that activity: the
// owner writes it to the store.
func TestReaperSparesBuildActiveOnAnotherReplica(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := setupReplicas(t, timeout)
	ctx := context.Background()
	busy, _ := r.connectThroughA(t, "pa")
	quiet, _ := r.connectThroughA(t, "pa")
	r.activeOnB = func(id string) bool { return id == busy.ID }
	end := time.Now().Add(2 * timeout)
	for time.Now().Before(end) {
		time.Sleep(timeout / 6)
		if err := r.b.svc.ReapAbandoned(ctx); err != nil {
			t.Fatal(err)
		}
		if got, _ := r.a.st.GetBuild(ctx, busy.ID); got.Status != build.Running {
			t.Fatalf("busy build: %s; b sees it active", got.Status)
		}
		if err := r.a.svc.ReapAbandoned(ctx); err != nil {
			t.Fatal(err)
		}
		if got, _ := r.a.st.GetBuild(ctx, busy.ID); got.Status != build.Running {
			t.Fatalf("busy build canceled by a's reaper (%q); b saw it active", got.Error)
		}
	}
	if got, _ := r.a.st.GetBuild(ctx, quiet.ID); got.Status != build.Canceled {
		t.Errorf("quiet build: %s; want canceled by the health timeout", got.Status)
	}
}

// A step report arriving at a replica that does not hold the build's
// builder keeps only the client's own steps: the owner follows the
// build's solves on its builder. A build whose builder is here, and not
// followed, keeps all.
func TestStepsReportedElsewhereKeepTheClientsOwn(t *testing.T) {
	r := setupReplicas(t, time.Hour)
	ctx := context.Background()
	onB, _ := r.connectThroughA(t, "pa")
	onA, _ := r.connectThroughA(t, "pb")
	report := []build.Step{
		{Digest: "sha256:b", Name: "[2/2] RUN echo hi"},
		{Digest: "sha256:d", Name: "[depot] launching amd64 machine"},
	}
	for id, want := range map[string]int{onB.ID: 1, onA.ID: 2} {
		if err := r.a.svc.ReportSteps(ctx, r.a.org, id, report, nil); err != nil {
			t.Fatal(err)
		}
		if got, _ := r.a.st.ListSteps(ctx, id); len(got) != want {
			t.Errorf("build %s: %d steps stored (%+v); want %d", id, len(got), got, want)
		}
	}
}

// The health reaper runs on the replica holding its lock; the others only
// write down the activity their gateways see, which it counts.
func TestReaperRunsOnOneReplica(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := setupReplicas(t, timeout)
	ctx := context.Background()
	busy, _ := r.connectThroughA(t, "pa")
	quiet, _ := r.connectThroughA(t, "pa")
	r.activeOnB = func(id string) bool { return id == busy.ID }
	time.Sleep(timeout + timeout/2)
	if err := r.b.svc.ReapTick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.a.st.GetBuild(ctx, quiet.ID); got.Status != build.Running {
		t.Errorf("quiet build after b's round: %s; want running (b does not hold the reaper's lock)", got.Status)
	}
	if got, _ := r.a.st.GetBuild(ctx, busy.ID); time.Since(got.LastHealthAt) > timeout/2 {
		t.Errorf("busy build's last health %s ago after b's round; want b's sighting recorded", time.Since(got.LastHealthAt))
	}
	if err := r.a.svc.ReapTick(ctx); err != nil {
		t.Fatal(err)
	}
	q, _ := r.a.st.GetBuild(ctx, quiet.ID)
	b, _ := r.a.st.GetBuild(ctx, busy.ID)
	if q.Status != build.Canceled || b.Status != build.Running {
		t.Errorf("after a's round: quiet %s, busy %s; want canceled, running", q.Status, b.Status)
	}
}
