package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An operator serving beyond loopback turns on TLS: plain HTTP is refused
// with a message saying what to do, and the CLI (trusting kiln's CA with
// SSL_CERT_FILE) builds and saves through the same port: API, builder
// gateway and registry.
func TestServeTLSAuto(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--tls", "auto")
	ca := filepath.Join(s.Data, "pki", "ca.crt")
	https := "https://" + s.addr

	// Plain HTTP is refused, naming the fix.
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	plain, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(plain), "400") || !strings.Contains(string(plain), "TLS only") {
		t.Errorf("plain HTTP to a TLS-only server answered %q", plain)
	}

	// TLS verifies against kiln's CA.
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	res, err := hc.Get(https + "/healthz")
	if err != nil {
		t.Fatalf("https with kiln's CA: %v", err)
	}
	res.Body.Close()
	if res.Proto != "HTTP/2.0" {
		t.Errorf("TLS protocol %s, want HTTP/2 by ALPN", res.Proto)
	}

	tls := []string{"KILN_API_URL=" + https, "SSL_CERT_FILE=" + ca}
	r := s.kiln(t, t.TempDir(), tls, "projects", "create", "tls", "--quiet")
	if r.Err != nil {
		t.Fatalf("projects create over TLS: %v\n%s", r.Err, r.Stderr)
	}
	proj := strings.TrimSpace(r.Stdout)
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo over-tls > /f\n"})
	out := t.TempDir()
	r = s.kiln(t, dir, tls, "build", "--project", proj, "--progress", "plain", "--save", "-o", "type=local,dest="+out, ".")
	if r.Err != nil {
		t.Fatalf("kiln build --save over TLS: %v\n%s", r.Err, tail(r.Stderr, 4000))
	}
	if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != "over-tls\n" {
		t.Errorf("built file = %q", b)
	}
	if !strings.Contains(r.Stderr, "saved to kiln's registry") {
		t.Errorf("--save over TLS did not save:\n%s", tail(r.Stderr, 2000))
	}

	// Without kiln's CA the client refuses the server, and says why.
	r = s.kiln(t, t.TempDir(), []string{"KILN_API_URL=" + https, "SSL_CERT_FILE=/dev/null"}, "projects", "list")
	if r.Err == nil || !strings.Contains(r.Stderr, "certificate") {
		t.Errorf("a client without kiln's CA: err=%v stderr=%q, want a certificate error", r.Err, r.Stderr)
	}
}
