package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// readyFleet's builders are always ready; it counts leases.
type readyFleet struct {
	mu     sync.Mutex
	leases map[string]bool
}

func (f *readyFleet) Ensure(want spec.Spec) (spec.Endpoint, bool, error) {
	return spec.Endpoint{ServerName: want.ProjectID + ".builder.kiln", CACertPEM: "ca", Socket: "/secret.sock"}, true, nil
}
func (f *readyFleet) Lease(p, pl, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leases[p+" "+pl+" "+id] = true
}

func (f *readyFleet) Release(p, pl, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.leases, p+" "+pl+" "+id)
}

func (f *readyFleet) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.leases)
}

// recordingFleet records the project operations applied to it.
type recordingFleet struct {
	mu  sync.Mutex
	ops []string
}

func (f *recordingFleet) add(op string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, op)
}

func (f *recordingFleet) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

func (f *recordingFleet) Reset(_ context.Context, projectID string) error {
	f.add("reset " + projectID)
	return nil
}

func (f *recordingFleet) SetEgressAllow(projectID string, allow []netip.Prefix) error {
	f.add(fmt.Sprintf("egress %s %v", projectID, allow))
	return nil
}

// peerReplica is a replica with just what the internal API needs: its
// membership, a build service over readyFleet, project operations on a
// recordingFleet, and the API served.
type peerReplica struct {
	s      *Server
	srv    *httptest.Server
	fleet  *recordingFleet
	leases *readyFleet
}

func testKey(b byte) []byte { return []byte(strings.Repeat(string(rune('a'+b)), 32)) }

func newPeerReplica(t *testing.T, st store.Store, id string, key []byte) *peerReplica {
	t.Helper()
	ctx := context.Background()
	ca, err := pki.Open(filepath.Join(t.TempDir(), "pki"))
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	c, err := cluster.New(st, cluster.Config{Self: cluster.Replica{ID: id}, Key: key, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: Config{DataDir: t.TempDir(), Logger: logger}, store: st, ca: ca, cluster: c}
	s.peers = newPeers(s)
	fleet := &recordingFleet{}
	s.peers.fleet, s.peers.revokeProject = fleet, func(projectID string) { fleet.add("revoke " + projectID) }
	leases := &readyFleet{leases: map[string]bool{}}
	s.builds = build.NewService(st, leases, ca, build.Config{Cluster: c, Owners: s.peers.owners(),
		GatewayAddr: func() string { return "tcp://" + id + ".example:7000" }}, logger)
	mux := http.NewServeMux()
	s.peers.mount(ctx, mux)
	r := &peerReplica{s: s, srv: httptest.NewServer(mux), fleet: fleet, leases: leases}
	t.Cleanup(r.srv.Close)
	if err := c.Start(ctx, r.srv.URL, id+".example:7000"); err != nil {
		t.Fatal(err)
	}
	return r
}

func openPeerStore(t *testing.T) store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"})
	st.CreateProject(ctx, project.Project{ID: "pa", OrgID: "o", Name: "pa"})
	return st
}

func postPeer(t *testing.T, url, bearer string, body io.Reader) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, body)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

// Only a caller holding the cluster's bearer reaches the internal API,
// and what it sends is bounded; a replica without a cluster key admits
// nobody.
func TestPeerAPIAuthenticatesAndBoundsBodies(t *testing.T) {
	st := openPeerStore(t)
	r := newPeerReplica(t, st, "a", testKey(0))
	bearer := r.s.cluster.PeerToken()
	if _, mac, ok := strings.Cut(bearer, "."); !ok || len(mac) != 64 || strings.Contains(bearer, string(testKey(0))) {
		t.Fatalf("bearer %q: want a time and a 32-byte HMAC in hex, not the key", bearer)
	}
	other, _ := cluster.New(st, cluster.Config{Self: cluster.Replica{ID: "x"}, Key: testKey(1)})
	connect, proj := r.srv.URL+peerConnectPath, r.srv.URL+peerProjectPath
	for _, c := range []struct {
		name, url, bearer, body string
		want                    int
	}{
		{"no bearer", connect, "", `{"build_id":"b","platform":"amd64"}`, http.StatusUnauthorized},
		{"a kiln-looking token", proj, "kiln_org_x", `{"op":"reset","project_id":"pa"}`, http.StatusUnauthorized},
		{"another cluster's bearer", connect, other.PeerToken(), `{"build_id":"b","platform":"amd64"}`, http.StatusUnauthorized},
		{"the bearer with a suffix", connect, bearer + "0", `{}`, http.StatusUnauthorized},
		{"too large", connect, bearer, `{"build_id":"` + strings.Repeat("x", peerBodyLimit) + `"}`, http.StatusRequestEntityTooLarge},
		{"not JSON", connect, bearer, `nope`, http.StatusBadRequest},
		{"unknown build", connect, bearer, `{"build_id":"nosuch","platform":"amd64"}`, http.StatusNotFound},
		{"unknown op", proj, bearer, `{"op":"explode","project_id":"pa"}`, http.StatusBadRequest},
		{"bad project id", proj, bearer, `{"op":"reset","project_id":"../x"}`, http.StatusBadRequest},
	} {
		if res := postPeer(t, c.url, c.bearer, strings.NewReader(c.body)); res.StatusCode != c.want {
			t.Errorf("%s: %d; want %d", c.name, res.StatusCode, c.want)
		}
	}
	// A body of unknown length is bounded too.
	big := io.MultiReader(strings.NewReader(`{"build_id":"`), strings.NewReader(strings.Repeat("x", 2*peerBodyLimit)))
	if res := postPeer(t, connect, bearer, io.NopCloser(big)); res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("streamed large body: %d; want 413", res.StatusCode)
	}

	solo := newPeerReplica(t, openPeerStore(t), "solo", nil)
	if solo.s.cluster.PeerToken() != "" || solo.s.cluster.PeerAuthentic("") {
		t.Error("a replica without a cluster key has a bearer")
	}
	if res := postPeer(t, solo.srv.URL+peerConnectPath, "", strings.NewReader(`{}`)); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("keyless replica, no bearer: %d; want 401", res.StatusCode)
	}
}

// A replica asks the owner of a builder to connect a build there, and
// gets the owner's gateway and certificate; the owner's errors keep their
// kind, and an owner it cannot reach (or that refuses its key) is
// Unavailable, for the client to retry.
func TestPeerConnectReachesTheOwner(t *testing.T) {
	ctx := context.Background()
	st := openPeerStore(t)
	b := newPeerReplica(t, st, "b", testKey(0))
	a := newPeerReplica(t, st, "a", testKey(0))
	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o"}
	bd, _, err := a.s.builds.Create(ctx, org, "pa", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The project's builder runs on b: a build connected through a gets it.
	if owner, err := b.s.cluster.PlaceBuilder(ctx, "pa", "linux/amd64"); err != nil || owner != "b" {
		t.Fatalf("place pa's builder on b: %s, %v", owner, err)
	}
	c, err := a.s.builds.Connect(ctx, org, bd.ID, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Ready || c.Addr != "tcp://b.example:7000" || c.Endpoint.ServerName != "pa.builder.kiln" || c.Endpoint.Socket != "" ||
		!strings.Contains(c.CertPEM, "CERTIFICATE") || c.KeyPEM == "" {
		t.Errorf("connection from b: %+v; want b's gateway and a client certificate, no socket", c)
	}
	if got, _ := st.GetBuild(ctx, bd.ID); got.Replica != "b" || b.leases.count() != 1 || a.leases.count() != 0 {
		t.Errorf("build replica %q, leases on a %d, on b %d; want b's builder leased", got.Replica, a.leases.count(), b.leases.count())
	}
	if err := a.s.builds.Release(ctx, org, bd.ID, "amd64"); err != nil || b.leases.count() != 0 {
		t.Errorf("release through a: %v, b's leases %d; want released on b", err, b.leases.count())
	}
	if err := a.s.builds.Finish(ctx, org, bd.ID, build.Result{Status: build.Canceled}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.s.peers.owners().Connect(ctx, "b", bd.ID, "linux/amd64"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("connect of an ended build through b: %v; want FailedPrecondition", err)
	}
	if _, err := a.s.peers.owners().Connect(ctx, "nosuch", bd.ID, "linux/amd64"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("connect through an unknown replica: %v; want Unavailable", err)
	}
	// A replica given another key is refused: Unavailable, naming the key.
	stranger := newPeerReplica(t, st, "s", testKey(2))
	if _, err := stranger.s.peers.owners().Connect(ctx, "b", bd.ID, "linux/amd64"); !errors.Is(err, errdefs.ErrUnavailable) ||
		!strings.Contains(err.Error(), "--cluster-key-file") {
		t.Errorf("connect with another key: %v; want Unavailable naming --cluster-key-file", err)
	}
	b.srv.Close()
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := a.s.peers.owners().Connect(ctx2, "b", bd.ID, "linux/amd64"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("connect through a replica that is down: %v; want Unavailable", err)
	}
}

// A project's cache reset, deletion and egress change reach the builders
// of every live replica; one that is down fails the operation, for the
// caller to retry.
func TestProjectOperationsReachEveryReplica(t *testing.T) {
	ctx := context.Background()
	st := openPeerStore(t)
	b := newPeerReplica(t, st, "b", testKey(0))
	c := newPeerReplica(t, st, "c", testKey(0))
	a := newPeerReplica(t, st, "a", testKey(0))
	if err := a.s.peers.builders().Reset(ctx, "pa"); err != nil {
		t.Fatal(err)
	}
	if err := a.s.peers.network().SetEgressAllow("pa", []string{"10.0.0.0/8"}); err != nil {
		t.Fatal(err)
	}
	if err := a.s.peers.broadcast(ctx, peerProjectRequest{Op: peerOpDelete, ProjectID: "pa"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"reset pa", "egress pa [10.0.0.0/8]", "revoke pa", "reset pa"}
	for name, r := range map[string]*peerReplica{"b": b, "c": c} {
		if got := r.fleet.got(); !slices.Equal(got, want) {
			t.Errorf("replica %s applied %q; want %q", name, got, want)
		}
	}
	if got := a.fleet.got(); !slices.Equal(got, want[:2]) {
		t.Errorf("the calling replica applied %q; want %q", got, want[:2])
	}
	c.srv.Close()
	if err := a.s.peers.builders().Reset(ctx, "pa"); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "replica c") {
		t.Errorf("reset with replica c down: %v; want Unavailable naming c", err)
	}
	if got := b.fleet.got(); len(got) != 5 {
		t.Errorf("replica b after the second reset: %q", got)
	}
}

// A replica starting drops the builder state of projects deleted while it
// was down, and only theirs.
func TestDropsBuilderStateOfDeletedProjects(t *testing.T) {
	r := newPeerReplica(t, openPeerStore(t), "a", testKey(0))
	for _, d := range []string{"pa", "gone", ".disk-reserve"} {
		if err := os.MkdirAll(filepath.Join(r.s.cfg.DataDir, "builders", d, "amd64"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	r.s.peers.dropDeleted(context.Background())
	if got := r.fleet.got(); !slices.Equal(got, []string{"reset gone"}) {
		t.Errorf("dropped %q; want the deleted project's only", got)
	}
}
