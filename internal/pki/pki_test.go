package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func pool(t *testing.T, pemBytes []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemBytes) {
		t.Fatal("bad CA PEM")
	}
	return p
}

func leaf(t *testing.T, certPEM, keyPEM []byte) *x509.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("key pair: %v", err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientCertIsolatedPerProject(t *testing.T) {
	a, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	caA, err := a.ProjectCA("proj-a")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := a.ProjectCA("proj-b")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := a.IssueClient("proj-a", "build-123", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c := leaf(t, certPEM, keyPEM)
	if c.Subject.CommonName != "build-123" || len(c.Subject.OrganizationalUnit) != 1 || c.Subject.OrganizationalUnit[0] != "proj-a" {
		t.Fatalf("subject = %v", c.Subject)
	}
	if time.Until(c.NotBefore) > -30*time.Second {
		t.Fatalf("NotBefore %v not backdated", c.NotBefore)
	}
	opts := func(roots *x509.CertPool) x509.VerifyOptions {
		return x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}
	if _, err := c.Verify(opts(pool(t, caA))); err != nil {
		t.Fatalf("client cert of A does not verify against A's CA: %v", err)
	}
	if _, err := c.Verify(opts(pool(t, caB))); err == nil {
		t.Fatal("client cert of A verifies against B's CA")
	}
	// The same cert must not pass as a server cert.
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool(t, caA)}); err == nil {
		t.Fatal("client cert verifies for server auth")
	}
	// The root chains the project CA, but is not what builders trust.
	if _, err := c.Verify(x509.VerifyOptions{
		Roots:         pool(t, a.RootPEM()),
		Intermediates: pool(t, caA),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatalf("chain to root: %v", err)
	}
}

func TestServerCert(t *testing.T) {
	a, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := a.ProjectCA("p1")
	// 64-character project ids make a DNS label longer than 63; Go accepts it.
	long := strings.Repeat("x", 64)
	for _, name := range []string{"p1-amd64.builder.kiln", long + "-amd64.builder.kiln"} {
		certPEM, keyPEM, err := a.IssueServer("p1", name, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := leaf(t, certPEM, keyPEM)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool(t, ca), DNSName: name}); err != nil {
			t.Fatalf("verify %s: %v", name, err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool(t, ca), DNSName: "other.builder.kiln"}); err == nil {
			t.Fatal("verifies with a wrong name")
		}
		if err := c.VerifyHostname("127.0.0.1"); err != nil {
			t.Fatalf("IP SAN: %v", err)
		}
	}
}

func TestPersistedCAReloads(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca1, err := a.ProjectCA("p1")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v", st.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, "projects", "p1", "ca.key")); err != nil {
		t.Fatal(err)
	}

	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.RootPEM(), b.RootPEM()) {
		t.Fatal("root changed on reload")
	}
	ca2, err := b.ProjectCA("p1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca1, ca2) {
		t.Fatal("project CA changed on reload")
	}
	// A cert issued after the reload verifies against the CA handed out before.
	certPEM, keyPEM, err := b.IssueClient("p1", "x", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf(t, certPEM, keyPEM).Verify(x509.VerifyOptions{Roots: pool(t, ca1), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
}

func TestProjectCAConcurrent(t *testing.T) {
	a, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := a.ProjectCA("p1")
			if err != nil {
				t.Error(err)
			}
			got[i] = p
		}()
	}
	wg.Wait()
	for _, p := range got[1:] {
		if !bytes.Equal(p, got[0]) {
			t.Fatal("concurrent ProjectCA calls created different CAs")
		}
	}
}

func TestInvalidInput(t *testing.T) {
	a, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "Upper", "a/b", "..", strings.Repeat("a", 65), "a_b"} {
		if _, err := a.ProjectCA(id); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ProjectCA(%q) = %v, want ErrInvalid", id, err)
		}
	}
	if _, _, err := a.IssueClient("p", "cn", 0); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("ttl 0: %v", err)
	}
	if _, _, err := a.IssueServer("p", "", nil, time.Hour); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("empty server name: %v", err)
	}
}

// kiln's client certificates to builder pods chain to a CA of their own:
// a build's certificate (from its project's CA) does not verify against
// it, even with the project CA as an intermediate, and kiln's does.
func TestBuilderClientCA(t *testing.T) {
	a, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := a.BuilderClientCA()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	verify := func(certPEM []byte, intermediates ...[]byte) error {
		block, _ := pem.Decode(certPEM)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		for _, p := range intermediates {
			pool.AppendCertsFromPEM(p)
		}
		_, err = cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	kiln, _, err := a.IssueBuilderClient("kiln-builder-gateway", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(kiln); err != nil {
		t.Errorf("kiln's certificate: %v", err)
	}
	build, _, err := a.IssueClient("p1", "build:b1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	projectCA, _ := a.ProjectCA("p1")
	if err := verify(build, projectCA, a.RootPEM()); err == nil {
		t.Error("a build's certificate verifies against the builder clients' CA")
	}
	again, _ := a.BuilderClientCA()
	if string(again) != string(caPEM) {
		t.Error("the builder clients' CA changed between calls")
	}
}
