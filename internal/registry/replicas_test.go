package registry

import (
	"context"
	"crypto/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/cluster"
)

// replica is a cluster member on st with a shared key.
func replica(t *testing.T, st cluster.Store, id string, key []byte) *cluster.Cluster {
	t.Helper()
	c, err := cluster.New(st, cluster.Config{Self: cluster.Replica{ID: id}, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A registry token one replica issued verifies on another replica on the
// same store; and the first replica's key file seeded the shared key (a
// single install moved to replicas keeps its tokens good).
func TestRegistryTokensAcrossReplicas(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	var keyFile []byte
	f := newFixture(t, func(cfg *Config) {
		// The install's own key, from before it had replicas.
		if _, err := loadOrCreateKey(filepath.Join(cfg.Dir, "token-key.pem")); err != nil {
			t.Fatal(err)
		}
		keyFile, _ = os.ReadFile(filepath.Join(cfg.Dir, "token-key.pem"))
	})
	a := replica(t, f.st, "a", key)
	ctx := context.Background()
	regA, err := New(ctx, Config{Dir: f.reg.cfg.Dir, Store: f.st, Authn: &auth.Authenticator{Store: f.st}, Secret: a.Secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { regA.Close() })
	seeded, _ := parseTokenKey(keyFile)
	if regA.tokens.kid != seeded.kid {
		t.Error("the first replica did not seed the store with its key file")
	}
	regB, err := New(ctx, Config{Dir: t.TempDir(), Store: f.st, Authn: &auth.Authenticator{Store: f.st}, Secret: replica(t, f.st, "b", key).Secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { regB.Close() })
	srvA, srvB := httptest.NewServer(regA), httptest.NewServer(regB)
	t.Cleanup(srvA.Close)
	t.Cleanup(srvB.Close)

	pull := f.token(auth.TokenPull, "o1", "p1")
	fa := &fixture{t: t, st: f.st, reg: regA, srv: srvA, host: strings.TrimPrefix(srvA.URL, "http://")}
	fb := &fixture{t: t, st: f.st, reg: regB, srv: srvB, host: strings.TrimPrefix(srvB.URL, "http://")}
	tok := fa.fetchToken(pull, "repository:p1/app:pull")
	if res := fb.do("GET", "/v2/p1/app/tags/list", "Bearer "+tok, nil); res.StatusCode != 404 { // allowed; the repo is empty
		t.Errorf("A's token on B: %d %s", res.StatusCode, ociCode(t, res))
	}
	// A replica with another cluster key cannot open the shared key.
	other := make([]byte, 32)
	rand.Read(other)
	if _, err := New(ctx, Config{Dir: t.TempDir(), Store: f.st, Authn: &auth.Authenticator{Store: f.st}, Secret: replica(t, f.st, "c", other).Secret}); err == nil ||
		!strings.Contains(err.Error(), "cluster-key-file") {
		t.Errorf("a replica with another key: %v", err)
	}
}

// With Exclusive, a replica collects only when it gets the lock: while
// another holds it, Run's ticks collect nothing.
func TestGarbageCollectionOneReplicaAtATime(t *testing.T) {
	var ran, skipped atomic.Int32
	f := newFixture(t, func(cfg *Config) {
		cfg.GCInterval = 10 * time.Millisecond
	})
	c := replica(t, f.st, "a", nil)
	f.reg.cfg.Exclusive = func(ctx context.Context, name string, fn func(context.Context) error) (bool, error) {
		ok, err := c.Exclusive(ctx, name, fn)
		if ok {
			ran.Add(1)
		} else {
			skipped.Add(1)
		}
		return ok, err
	}
	_, unlock, ok, err := f.st.TryLock(context.Background(), "registry-gc") // another replica collecting
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.reg.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for skipped.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ran.Load() != 0 || skipped.Load() < 3 {
		t.Fatalf("while another holds the lock: ran %d, skipped %d", ran.Load(), skipped.Load())
	}
	unlock() // the other replica finished (or died: its lock went with its connection)
	for ran.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if ran.Load() == 0 {
		t.Fatal("never collected once the lock was free")
	}
}
