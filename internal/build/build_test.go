package build_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// fakeFleet records leases; builders are ready after `pending` Ensure calls.
type fakeFleet struct {
	mu      sync.Mutex
	pending int
	leases  map[string]bool
	specs   []spec.Spec
}

func (f *fakeFleet) Ensure(want spec.Spec) (spec.Endpoint, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, want)
	if f.pending > 0 {
		f.pending--
		return spec.Endpoint{}, false, nil
	}
	return spec.Endpoint{Socket: "/nonexistent.sock", ServerName: want.ProjectID, CACertPEM: "ca"}, true, nil
}

func (f *fakeFleet) Lease(p, pl, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leases[p+"/"+pl+"/"+id] = true
}

func (f *fakeFleet) Release(p, pl, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.leases, p+"/"+pl+"/"+id)
}

func (f *fakeFleet) leaseCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.leases)
}

type fakeCerts struct{}

func (fakeCerts) IssueClient(projectID, cn string, ttl time.Duration) ([]byte, []byte, error) {
	return []byte("cert:" + projectID), []byte("key"), nil
}

type env struct {
	svc   *build.Service
	fleet *fakeFleet
	st    store.Store
	org   auth.Principal
}

func setup(t *testing.T, timeout time.Duration) env {
	t.Helper()
	return setupWith(t, build.Config{HealthTimeout: timeout})
}

func setupWith(t *testing.T, cfg build.Config) env {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"})
	for _, p := range []string{"pa", "pb"} {
		st.CreateProject(ctx, project.Project{ID: p, OrgID: "o", Name: p, KeepGB: 3, KeepDays: 2})
	}
	f := &fakeFleet{pending: 1, leases: map[string]bool{}}
	svc := build.NewService(st, f, fakeCerts{}, cfg, slog.New(slog.DiscardHandler))
	return env{svc: svc, fleet: f, st: st, org: auth.Principal{Kind: auth.TokenOrg, OrgID: "o"}}
}

// principalOf authenticates a build token the way the server does.
func principalOf(t *testing.T, st store.Store, secret string) auth.Principal {
	t.Helper()
	p, err := (&auth.Authenticator{Store: st}).Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConnectPendingThenActiveWithProjectPolicy(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	b, secret, err := e.svc.Create(ctx, e.org, "pa", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := principalOf(t, e.st, secret)
	c, err := e.svc.Connect(ctx, p, b.ID, "amd64")
	if err != nil || c.Ready || c.WaitMs <= 0 {
		t.Fatalf("first connect = %+v, %v; want pending with wait_ms", c, err)
	}
	c, err = e.svc.Connect(ctx, p, b.ID, "linux/amd64")
	if err != nil || !c.Ready || c.CertPEM != "cert:pa" {
		t.Fatalf("second connect = %+v, %v", c, err)
	}
	got := e.fleet.specs[0]
	if got.KeepBytes != 3<<30 || got.KeepDuration != 48*time.Hour || got.Platform != "linux/amd64" {
		t.Errorf("cache policy → spec = %+v", got)
	}
	if e.fleet.leaseCount() != 1 {
		t.Errorf("leases = %d, want 1", e.fleet.leaseCount())
	}
	if _, err := e.svc.Connect(ctx, p, b.ID, "s390x"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("unsupported platform: %v", err)
	}
}

func TestBuildTokenReachesOnlyItsBuild(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	a, secretA, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	b, _, _ := e.svc.Create(ctx, e.org, "pb", 1, nil)
	pa := principalOf(t, e.st, secretA)
	// Another tenant's build answers exactly as a build that does not
	// exist: a build token learns nothing of which ids exist.
	for _, c := range []struct {
		what string
		call func(id string) error
	}{
		{"Get", func(id string) error { _, err := e.svc.Get(ctx, pa, id); return err }},
		{"Connect", func(id string) error { _, err := e.svc.Connect(ctx, pa, id, "amd64"); return err }},
		{"Finish", func(id string) error { return e.svc.Finish(ctx, pa, id, build.Result{Status: build.Succeeded}) }},
		{"Health", func(id string) error { _, err := e.svc.Health(ctx, pa, id); return err }},
	} {
		other, missing := c.call(b.ID), c.call("nosuchbuild1")
		if !errdefs.IsNotFound(other) || !errdefs.IsNotFound(missing) ||
			strings.Replace(other.Error(), b.ID, "ID", 1) != strings.Replace(missing.Error(), "nosuchbuild1", "ID", 1) {
			t.Errorf("%s with A's build token: B's build %v, a missing build %v; want the same NotFound", c.what, other, missing)
		}
	}
	if got, _ := e.st.GetBuild(ctx, b.ID); got.Status != b.Status {
		t.Errorf("B's build changed: %s", got.Status)
	}
	for _, proj := range []string{"pa", "pb", "nosuchproject"} {
		if _, _, err := e.svc.Create(ctx, pa, proj, 1, nil); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("build token creating builds in %s: %v; want the same PermissionDenied for any project", proj, err)
		}
	}
	for _, proj := range []string{"pa", "pb", "nosuchproject"} {
		if _, err := e.svc.List(ctx, pa, proj, time.Time{}, 10); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("build token listing %s: %v; want the same PermissionDenied for any project", proj, err)
		}
		if _, _, err := e.svc.Page(ctx, pa, proj, 10, ""); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("build token paging %s: %v; want the same PermissionDenied for any project", proj, err)
		}
	}
	// A project token of A sees nothing of B (NotFound, no enumeration).
	projA := auth.Principal{Kind: auth.TokenProject, OrgID: "o", ProjectID: "pa"}
	if _, err := e.svc.Get(ctx, projA, b.ID); !errdefs.IsNotFound(err) {
		t.Errorf("A's project token on B's build: %v", err)
	}
	// Creating in another project is refused, naming both, the same way
	// whether that project exists or not (before any lookup).
	for _, proj := range []string{"pb", "nosuchproject"} {
		_, _, err := e.svc.Create(ctx, projA, proj, 1, nil)
		want := "this token belongs to project pa; it cannot build in project " + proj
		if !errors.Is(err, errdefs.ErrPermission) || !strings.HasPrefix(err.Error(), want+":") {
			t.Errorf("A's project token creating in %s: %v; want PermissionDenied %q", proj, err, want)
		}
	}
	if _, err := e.svc.Get(ctx, pa, a.ID); err != nil {
		t.Errorf("own build: %v", err)
	}
}

func TestFinishIsIdempotentAndReleases(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	b, secret, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	p := principalOf(t, e.st, secret)
	e.svc.Connect(ctx, p, b.ID, "amd64")
	if err := e.svc.Finish(ctx, p, b.ID, build.Result{Status: build.Failed, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Finish(ctx, p, b.ID, build.Result{Status: build.Failed, Error: "boom again"}); err != nil {
		t.Fatalf("the same result again (a retry): %v", err)
	}
	// A different result is refused, saying how the build was recorded:
	// the client must not believe its success was.
	err := e.svc.Finish(ctx, p, b.ID, build.Result{Status: build.Succeeded})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "already ended as failed: boom") {
		t.Fatalf("success after failure: %v; want FailedPrecondition naming the recorded failure", err)
	}
	got, _ := e.svc.Get(ctx, p, b.ID)
	if got.Status != build.Failed || got.Error != "boom" || got.FinishedAt.IsZero() {
		t.Errorf("after two finishes: %+v (first result must win)", got)
	}
	if e.fleet.leaseCount() != 0 {
		t.Errorf("leases after finish = %d", e.fleet.leaseCount())
	}
	if _, err := e.svc.Connect(ctx, p, b.ID, "amd64"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("connect after finish: %v", err)
	}
	if at, err := e.svc.Health(ctx, p, b.ID); err != nil || at.After(time.Now()) {
		t.Errorf("health after finish = %v, %v; want a past cancels_at", at, err)
	}
}

func TestSilentBuildsAreReaped(t *testing.T) {
	e := setup(t, 50*time.Millisecond)
	ctx := context.Background()
	quiet, qs, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	e.svc.Connect(ctx, principalOf(t, e.st, qs), quiet.ID, "amd64")
	time.Sleep(80 * time.Millisecond)
	alive, as, _ := e.svc.Create(ctx, e.org, "pb", 1, nil)
	e.svc.Health(ctx, principalOf(t, e.st, as), alive.ID)
	if err := e.svc.ReapAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	q, _ := e.st.GetBuild(ctx, quiet.ID)
	a, _ := e.st.GetBuild(ctx, alive.ID)
	if q.Status != build.Canceled || a.Status != build.Running {
		t.Errorf("quiet=%s alive=%s; want canceled, running", q.Status, a.Status)
	}
	if e.fleet.leaseCount() != 0 {
		t.Errorf("the reaped build still holds %d leases", e.fleet.leaseCount())
	}
}

func TestBuilderLostFailsItsBuilds(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	b, _, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	e.svc.BuilderLost("pa", "linux/amd64", []string{b.ID}, errors.New("signal: killed"))
	got, _ := e.st.GetBuild(ctx, b.ID)
	if got.Status != build.Failed || got.Error == "" {
		t.Errorf("after builder loss: %+v", got)
	}
}

// acquiringFleet is a fakeFleet whose builders can be waited for: Acquire
// returns when ready is closed (or with failure), or when ctx ends.
type acquiringFleet struct {
	*fakeFleet
	ready   chan struct{}
	failure error
}

func (f *acquiringFleet) Acquire(ctx context.Context, want spec.Spec) (spec.Endpoint, error) {
	select {
	case <-f.ready:
		if f.failure != nil {
			return spec.Endpoint{}, f.failure
		}
		return spec.Endpoint{ServerName: want.ProjectID, CACertPEM: "ca"}, nil
	case <-ctx.Done():
		return spec.Endpoint{}, fmt.Errorf("not ready: %w", errdefs.ErrUnavailable)
	}
}

// A starting builder's GetBuildKitConnection waits for it (up to
// HoldPending) instead of telling the client to poll, answers pending when
// the wait runs out, and passes a failed start on.
func TestConnectHoldsWhileTheBuilderStarts(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name      string
		ready     bool
		failure   error
		wantReady bool
		wantErr   error
	}{
		{name: "ready during the hold", ready: true, wantReady: true},
		{name: "still starting when the hold ends"},
		{name: "start failed", ready: true, failure: fmt.Errorf("buildkitd exited: %w", errdefs.ErrUnavailable), wantErr: errdefs.ErrUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := setupWith(t, build.Config{HealthTimeout: time.Minute, HoldPending: 50 * time.Millisecond})
			e.fleet.pending = 1 << 30 // Ensure never says ready: only the hold can
			f := &acquiringFleet{fakeFleet: e.fleet, ready: make(chan struct{}), failure: c.failure}
			if c.ready {
				close(f.ready)
			}
			svc := build.NewService(e.st, f, fakeCerts{}, build.Config{HealthTimeout: time.Minute, HoldPending: 50 * time.Millisecond}, slog.New(slog.DiscardHandler))
			b, secret, err := svc.Create(ctx, e.org, "pa", 1, nil)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := svc.Connect(ctx, principalOf(t, e.st, secret), b.ID, "amd64")
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("connect = %+v, %v; want %v", conn, err, c.wantErr)
				}
				return
			}
			if err != nil || conn.Ready != c.wantReady || (!c.wantReady && conn.WaitMs <= 0) {
				t.Fatalf("connect = %+v, %v; want ready=%v (else a wait_ms)", conn, err, c.wantReady)
			}
			if c.wantReady && conn.CertPEM != "cert:pa" {
				t.Fatalf("connect = %+v: no client certificate", conn)
			}
		})
	}
}

// events records what an Observer is told.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) add(what string, b build.Build) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, what+" "+string(b.Status))
}
func (e *events) BuildCreated(b build.Build) { e.add("created", b) }
func (e *events) BuildStarted(b build.Build) { e.add("started", b) }
func (e *events) BuildEnded(b build.Build)   { e.add("ended", b) }

// The observer hears of a build's creation and of its end once, with the
// final record, however many times the client reports the end.
func TestObserverHearsEachEndOnce(t *testing.T) {
	ev := &events{}
	e := setupWith(t, build.Config{HealthTimeout: time.Minute, Observer: build.Observers{ev}})
	ctx := context.Background()
	b, secret, err := e.svc.Create(ctx, e.org, "pa", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := principalOf(t, e.st, secret)
	for range 2 {
		if err := e.svc.Finish(ctx, p, b.ID, build.Result{Status: build.Succeeded}); err != nil {
			t.Fatal(err)
		}
	}
	want := "created " + string(build.Running) + ",ended " + string(build.Succeeded)
	if got := strings.Join(ev.got, ","); got != want {
		t.Fatalf("observer heard %q, want %q", got, want)
	}
}
