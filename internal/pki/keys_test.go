package pki

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// memSecrets is a shared secret store: the first value put under a name
// wins (cluster.Cluster.Secret over one database).
type memSecrets struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memSecrets) secret(ctx context.Context, name string, make func() ([]byte, error)) ([]byte, error) {
	v, err := make()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	if old, ok := s.m[name]; ok {
		return old, nil
	}
	s.m[name] = v
	return v, nil
}

// Two replicas on one store: a client certificate from one is accepted by
// a builder whose server certificate came from the other, and both trust
// the same root (the file RootPath names).
func TestSharedCAAcrossReplicas(t *testing.T) {
	var store memSecrets
	var as [2]*Authority
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range as { // concurrent first starts agree
		wg.Add(1)
		go func() {
			defer wg.Done()
			as[i], errs[i] = Open(t.TempDir(), Shared(store.secret))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	a, b := as[0], as[1]
	if !bytes.Equal(a.RootPEM(), b.RootPEM()) {
		t.Fatal("the replicas have different roots")
	}
	rootFile, err := os.ReadFile(b.RootPath())
	if err != nil || !bytes.Equal(rootFile, a.RootPEM()) {
		t.Fatalf("RootPath does not hold the shared root: %v", err)
	}
	caA, err := a.ProjectCA("proj")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := b.ProjectCA("proj")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caA, caB) {
		t.Fatal("the replicas have different project CAs")
	}
	srvPEM, srvKey, err := a.IssueServer("proj", "builder", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cliPEM, cliKey, err := b.IssueClient("proj", "build-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf(t, srvPEM, srvKey).Verify(x509.VerifyOptions{Roots: pool(t, caB), DNSName: "builder"}); err != nil {
		t.Errorf("A's server certificate against B's project CA: %v", err)
	}
	if _, err := leaf(t, cliPEM, cliKey).Verify(x509.VerifyOptions{Roots: pool(t, caA), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("B's client certificate against A's project CA: %v", err)
	}
	cp, cpKey, err := b.IssueControlPlane([]string{"kiln.test"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf(t, cp, cpKey).Verify(x509.VerifyOptions{Roots: pool(t, a.RootPEM()), DNSName: "kiln.test"}); err != nil {
		t.Errorf("B's control plane certificate against A's root: %v", err)
	}
}

// A single install moved to replicas keeps its CA: the first replica
// seeds the store from its directory; a later one with a CA of its own
// sets it aside and uses the stored one.
func TestSharedCASeededFromTheDirectory(t *testing.T) {
	dir := t.TempDir()
	single, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	projCA, err := single.ProjectCA("proj")
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	other, err := Open(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	var store memSecrets
	first, err := Open(dir, Shared(store.secret))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.RootPEM(), single.RootPEM()) {
		t.Fatal("the first replica did not keep the install's root")
	}
	if got, _ := first.ProjectCA("proj"); !bytes.Equal(got, projCA) {
		t.Fatal("the first replica did not keep the install's project CA")
	}
	later, err := Open(otherDir, Shared(store.secret))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(later.RootPEM(), single.RootPEM()) {
		t.Fatal("a later replica kept its own root")
	}
	if got, _ := later.ProjectCA("proj"); !bytes.Equal(got, projCA) {
		t.Fatal("a later replica kept its own project CA")
	}
	set, err := os.ReadFile(filepath.Join(otherDir, "ca.crt.replaced"))
	if err != nil || !bytes.Equal(set, other.RootPEM()) {
		t.Fatalf("the later replica's own root was not set aside: %v", err)
	}
	// Without the store again, the directory holds the shared CA.
	back, err := Open(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.RootPEM(), single.RootPEM()) {
		t.Fatal("the mirrored root is not the shared one")
	}
}
