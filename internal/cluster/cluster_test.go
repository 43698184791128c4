package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// memStore is an in-memory Store.
type memStore struct {
	mu       sync.Mutex
	replicas map[string]Replica
	secrets  map[string]string
	locks    map[string]bool
	failBeat error
}

func newMemStore() *memStore {
	return &memStore{replicas: map[string]Replica{}, secrets: map[string]string{}, locks: map[string]bool{}}
}

func (m *memStore) Heartbeat(_ context.Context, r Replica) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failBeat != nil {
		return m.failBeat
	}
	r.HeartbeatAt = time.Now()
	m.replicas[r.ID] = r
	return nil
}

func (m *memStore) ListReplicas(context.Context) ([]Replica, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Replica
	for _, r := range m.replicas {
		r.Age = time.Since(r.HeartbeatAt)
		out = append(out, r)
	}
	return out, nil
}

func (m *memStore) RemoveReplica(_ context.Context, id string, staleFor time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.replicas[id]; ok && (staleFor <= 0 || time.Since(r.HeartbeatAt) >= staleFor) {
		delete(m.replicas, id)
	}
	return nil
}

func (m *memStore) PlaceBuilder(context.Context, string, string, string, time.Duration) (string, error) {
	return "", errors.New("not used")
}

func (m *memStore) PutSecretIfAbsent(_ context.Context, name, value string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.secrets[name]; ok {
		return v, nil
	}
	m.secrets[name] = value
	return value, nil
}

func (m *memStore) TryLock(ctx context.Context, name string) (context.Context, func(), bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.locks[name] {
		return nil, nil, false, nil
	}
	m.locks[name] = true
	return ctx, func() { m.mu.Lock(); delete(m.locks, name); m.mu.Unlock() }, true, nil
}

func testKey(b byte) []byte {
	k := make([]byte, keySize)
	for i := range k {
		k[i] = b
	}
	return k
}

// Two replicas with one key share the first one's secret; a replica with
// another key cannot open it, and a sealed value does not open under
// another secret's name.
func TestSecretSharedAndSealed(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	a, _ := New(st, Config{Self: Replica{ID: "a"}, Key: testKey(1)})
	b, _ := New(st, Config{Self: Replica{ID: "b"}, Key: testKey(1)})
	va, err := a.Secret(ctx, "ca", func() ([]byte, error) { return []byte("from a"), nil })
	if err != nil || string(va) != "from a" {
		t.Fatalf("a: %q %v", va, err)
	}
	vb, err := b.Secret(ctx, "ca", func() ([]byte, error) { return []byte("from b"), nil })
	if err != nil || string(vb) != "from a" {
		t.Fatalf("b got %q, %v; want a's secret", vb, err)
	}
	if strings.Contains(st.secrets["ca"], "from a") {
		t.Fatal("the secret is stored in the clear")
	}
	other, _ := New(st, Config{Self: Replica{ID: "c"}, Key: testKey(2)})
	if _, err := other.Secret(ctx, "ca", func() ([]byte, error) { return []byte("x"), nil }); err == nil || !strings.Contains(err.Error(), "cluster-key-file") {
		t.Fatalf("another key: %v; want an error naming the key file", err)
	}
	st.secrets["registry"] = st.secrets["ca"] // one secret's value passed off as another's
	if _, err := a.Secret(ctx, "registry", func() ([]byte, error) { return []byte("x"), nil }); err == nil {
		t.Fatal("a value sealed for one name opened under another")
	}
	single, _ := New(st, Config{Self: Replica{ID: "s"}})
	if single.Shared() {
		t.Fatal("no key but shared")
	}
	if _, err := single.Secret(ctx, "ca", func() ([]byte, error) { return nil, nil }); err == nil {
		t.Fatal("a single replica handed out a shared secret")
	}
}

// A replica that stops beating is reaped once: the hooks run for it, then
// it is forgotten; a hook's failure keeps it for the next beat. A live
// replica and this one are never reaped.
func TestReapDeadReplicas(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	c, err := New(st, Config{Self: Replica{ID: "self"}, Interval: 10 * time.Millisecond, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var settled []string
	fail := true
	c.OnDead(func(_ context.Context, id string) error {
		mu.Lock()
		defer mu.Unlock()
		settled = append(settled, id)
		if fail {
			return errors.New("store down")
		}
		return nil
	})
	if err := c.Start(ctx, "http://self", "tcp://self"); err != nil {
		t.Fatal(err)
	}
	c.healthySince = time.Now().Add(-time.Hour) // beating for long: it may judge others
	st.Heartbeat(ctx, Replica{ID: "live"})
	st.mu.Lock()
	st.replicas["dead"] = Replica{ID: "dead", HeartbeatAt: time.Now().Add(-time.Hour)}
	st.mu.Unlock()
	if err := c.beat(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.Alive("live") || c.Alive("dead") || !c.Alive("self") || c.Alive("unknown") {
		t.Fatal("Alive wrong")
	}
	if m, ok := c.Member("live"); !ok || m.ID != "live" {
		t.Fatal("Member of a live replica")
	}
	c.reap(ctx)
	if _, ok := st.replicas["dead"]; !ok {
		t.Fatal("forgotten although its hook failed")
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	c.reap(ctx)
	if _, ok := st.replicas["dead"]; ok {
		t.Fatal("not forgotten after its hooks succeeded")
	}
	if len(settled) != 2 || settled[0] != "dead" || settled[1] != "dead" {
		t.Fatalf("settled = %v", settled)
	}
	if _, ok := st.replicas["live"]; !ok {
		t.Fatal("a live replica was reaped")
	}

	// While another replica holds the reaper's lock, this one does not reap.
	st.replicas["dead2"] = Replica{ID: "dead2", HeartbeatAt: time.Now().Add(-time.Hour)}
	c.beat(ctx)
	_, unlock, _, _ := st.TryLock(ctx, "replica-reaper")
	c.reap(ctx)
	if _, ok := st.replicas["dead2"]; !ok {
		t.Fatal("reaped without the lock")
	}
	unlock()

	// Run stops with its context and removes this replica's record.
	run, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(run); close(done) }()
	time.Sleep(30 * time.Millisecond)
	cancel()
	<-done
	if _, ok := st.replicas["self"]; ok {
		t.Fatal("a clean stop left the replica's record")
	}
}

// After the database was out of reach for longer than the timeout, every
// replica's beat is old: the first one back must not take the others for
// dead before it has beaten for a whole timeout itself, by which time the
// live ones have beaten again. And a replica that could not beat for
// nearly the timeout is fenced: it starts no new work.
func TestOutageReapsNobodyAlive(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	const timeout = 200 * time.Millisecond
	a, _ := New(st, Config{Self: Replica{ID: "a"}, Interval: 20 * time.Millisecond, Timeout: timeout})
	b, _ := New(st, Config{Self: Replica{ID: "b"}, Interval: 20 * time.Millisecond, Timeout: timeout})
	var mu sync.Mutex
	var settled []string
	for _, c := range []*Cluster{a, b} {
		c.OnDead(func(_ context.Context, id string) error {
			mu.Lock()
			settled = append(settled, id)
			mu.Unlock()
			return nil
		})
		if err := c.Start(ctx, "http://"+c.Self(), ""); err != nil {
			t.Fatal(err)
		}
	}
	if a.Fenced() {
		t.Fatal("fenced right after a beat")
	}
	// The database is away for twice the timeout.
	st.mu.Lock()
	st.failBeat = errors.New("connection refused")
	st.mu.Unlock()
	time.Sleep(2 * timeout)
	if !a.Fenced() {
		t.Fatal("not fenced after missing beats for the timeout")
	}
	st.mu.Lock()
	st.failBeat = nil
	st.mu.Unlock()
	run, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// a comes back first; b a little later (its first tick is 20 ms on).
	wg.Add(2)
	go func() { defer wg.Done(); a.Run(run) }()
	time.Sleep(50 * time.Millisecond)
	go func() { defer wg.Done(); b.Run(run) }()
	time.Sleep(3 * timeout)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(settled) > 0 {
		t.Fatalf("live replicas settled as dead after an outage: %v", settled)
	}
}

func TestConfigChecks(t *testing.T) {
	st := newMemStore()
	if _, err := New(st, Config{}); err == nil {
		t.Fatal("no id accepted")
	}
	if _, err := New(st, Config{Self: Replica{ID: "a"}, Interval: time.Second, Timeout: time.Second}); err == nil {
		t.Fatal("a timeout shorter than two beats accepted")
	}
	if _, err := New(st, Config{Self: Replica{ID: "a"}, Key: []byte("short")}); err == nil {
		t.Fatal("a short key accepted")
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.key")
	os.WriteFile(path, []byte(strings.Repeat("ab", keySize)+"\n"), 0o600)
	if k, err := LoadKey(path); err != nil || len(k) != keySize || k[0] != 0xab {
		t.Fatalf("LoadKey = %x, %v", k, err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: %v", err)
	}
	os.WriteFile(path, []byte("not hex"), 0o600)
	os.Chmod(path, 0o600)
	if _, err := LoadKey(path); err == nil || !strings.Contains(err.Error(), "openssl rand -hex 32") {
		t.Fatalf("bad key: %v", err)
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing key file accepted")
	}
}

func TestReplicaID(t *testing.T) {
	dir := t.TempDir()
	id, err := ReplicaID(dir, "")
	if err != nil || !idRe.MatchString(id) {
		t.Fatalf("made id %q, %v", id, err)
	}
	if again, _ := ReplicaID(dir, ""); again != id {
		t.Fatalf("id changed across starts: %q then %q", id, again)
	}
	if got, err := ReplicaID(dir, "r2"); err != nil || got != "r2" {
		t.Fatalf("flag: %q %v", got, err)
	}
	for _, bad := range []string{"R2", "a b", "-x", strings.Repeat("a", 64), "../x"} {
		if _, err := ReplicaID(dir, bad); err == nil {
			t.Errorf("--replica-id %q accepted", bad)
		}
	}
	os.WriteFile(filepath.Join(dir, "replica-id"), []byte("bad id\n"), 0o600)
	if _, err := ReplicaID(dir, ""); err == nil {
		t.Fatal("a corrupt replica-id file accepted")
	}
}

// A replica's bearer opens the others' internal API for a while; another
// cluster's, an old one, or a forged one does not.
func TestPeerToken(t *testing.T) {
	st := newMemStore()
	a, _ := New(st, Config{Self: Replica{ID: "a"}, Key: testKey(1)})
	b, _ := New(st, Config{Self: Replica{ID: "b"}, Key: testKey(1)})
	other, _ := New(st, Config{Self: Replica{ID: "c"}, Key: testKey(2)})
	single, _ := New(st, Config{Self: Replica{ID: "s"}})
	tok := a.PeerToken()
	if !b.PeerAuthentic(tok) {
		t.Fatal("a replica's bearer refused by its peer")
	}
	if other.PeerAuthentic(tok) || single.PeerAuthentic(tok) || single.PeerToken() != "" {
		t.Fatal("a bearer of another cluster (or of none) accepted")
	}
	old := a.peerToken(time.Now().Add(-10 * time.Minute).Unix())
	if b.PeerAuthentic(old) {
		t.Fatal("a bearer ten minutes old accepted: one seen on the wire would open the API for good")
	}
	ts, mac, _ := strings.Cut(tok, ".")
	for _, forged := range []string{"", ".", ts, ts + ".", "x." + mac, ts + "." + strings.Repeat("0", len(mac)), tok + "0"} {
		if b.PeerAuthentic(forged) {
			t.Errorf("forged bearer %q accepted", forged)
		}
	}
}
