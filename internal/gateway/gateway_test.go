package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/pki"
)

// builders is a fake fleet: each name is an echo server on a unix socket.
type builders struct {
	dir     string
	sockets map[string][2]string // server name → project, socket

	mu    sync.Mutex
	holds map[string]int // server name → open holds
}

func (b *builders) Lookup(name string) (string, engine.Connection, bool) {
	v, ok := b.sockets[name]
	return v[0], engine.Connection{Endpoint: "unix://" + v[1]}, ok
}

func (b *builders) Hold(name string) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holds[name]++
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.holds[name]--
		})
	}
}

func (b *builders) held(name string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holds[name]
}

// echo serves lines back on a unix socket until the test ends.
func echo(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// access is a switchable Authorizer.
type access struct {
	mu     sync.Mutex
	denied map[string]error // build id → why not
	gates  map[string]gate  // build id → where its next answer waits
}

// gate holds an Authorize call: entered is closed when it is asked,
// and it answers once proceed is closed.
type gate struct{ entered, proceed chan struct{} }

func (a *access) authorize(_ context.Context, projectID, buildID string) error {
	a.mu.Lock()
	g, held := a.gates[buildID]
	delete(a.gates, buildID)
	a.mu.Unlock()
	if held {
		close(g.entered)
		<-g.proceed
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.denied[buildID]
}

// hold makes the build's next Authorize call wait (see gate).
func (a *access) hold(buildID string) gate {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := gate{entered: make(chan struct{}), proceed: make(chan struct{})}
	if a.gates == nil {
		a.gates = map[string]gate{}
	}
	a.gates[buildID] = g
	return g
}

func (a *access) deny(buildID string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.denied[buildID] = err
}

type env struct {
	ca   *pki.Authority
	gw   *gateway.Gateway
	addr string
	acc  *access
	b    *builders
}

func newEnv(t *testing.T, recheck time.Duration, opts ...func(*gateway.Config)) *env {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Open(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	b := &builders{dir: dir, sockets: map[string][2]string{}, holds: map[string]int{}}
	for _, p := range []string{"proj-a", "proj-b"} {
		sock := filepath.Join(dir, p+".sock")
		echo(t, sock)
		b.sockets[p+"-amd64.builder.kiln"] = [2]string{p, sock}
	}
	acc := &access{denied: map[string]error{}}
	cfg := gateway.Config{Builders: b, Certs: ca, Authorize: acc.authorize, Recheck: recheck}
	for _, o := range opts {
		o(&cfg)
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go gw.Run(ctx)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go gw.Serve(tls.Server(c, &tls.Config{GetConfigForClient: gw.TLSConfig}))
		}
	}()
	return &env{ca: ca, gw: gw, addr: l.Addr().String(), acc: acc, b: b}
}

// dial connects as a build client: a certificate of certProject with
// common name cn, to the builder named name.
func (e *env) dial(t *testing.T, certProject, cn, name string) (net.Conn, error) {
	t.Helper()
	certPEM, keyPEM, err := e.ca.IssueClient(certProject, cn, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := e.ca.ProjectCA("proj-a")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr, &tls.Config{
		ServerName: name, RootCAs: roots, NextProtos: []string{"h2"},
		// Present it even when the server names other acceptable CAs: the
		// gateway must do the refusing.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil },
		InsecureSkipVerify:   name != "proj-a-amd64.builder.kiln", // this test checks the server side only
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// roundTrip sends a line and reads it back: the splice to the builder works.
func roundTrip(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, "ping"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

func TestGatewaySplicesAuthorizedBuilds(t *testing.T) {
	e := newEnv(t, time.Hour)
	c, err := e.dial(t, "proj-a", "build:b1", "proj-a-amd64.builder.kiln")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c); err != nil {
		t.Fatalf("splice: %v", err)
	}
	if e.gw.Conns() != 1 {
		t.Errorf("%d connections tracked, want 1", e.gw.Conns())
	}
}

// While a build's connection is open the gateway says the build is active
// and holds its builder in use (no idle stop under a solve); both end with
// the connection.
func TestGatewayActiveHoldsBuilder(t *testing.T) {
	e := newEnv(t, time.Hour)
	const name = "proj-a-amd64.builder.kiln"
	if e.gw.Active("b1") {
		t.Fatal("Active before any connection")
	}
	c, err := e.dial(t, "proj-a", "build:b1", name)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	if !e.gw.Active("b1") {
		t.Error("Active(b1) false while its connection is open")
	}
	if e.gw.Active("b2") {
		t.Error("Active(b2) true: no connection of b2 is open")
	}
	if n := e.b.held(name); n != 1 {
		t.Errorf("builder held %d times, want 1", n)
	}
	c.Close()
	waitUntil(t, "the connection's end to release the builder", func() bool {
		return !e.gw.Active("b1") && e.b.held(name) == 0
	})

	// A refused connection never holds the builder.
	e.acc.deny("ended", fmt.Errorf("build ended: %w", errdefs.ErrFailedPrecondition))
	if c, err := e.dial(t, "proj-a", "build:ended", name); err == nil {
		_ = roundTrip(c)
		c.Close()
	}
	if e.gw.Active("ended") || e.b.held(name) != 0 {
		t.Error("a refused connection counts as active")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// From the attacker's side: every credential that is not a live build's
// own, for this builder's project, gets nowhere.
func TestGatewayRefuses(t *testing.T) {
	e := newEnv(t, time.Hour)
	e.acc.deny("ended", fmt.Errorf("build ended: %w", errdefs.ErrFailedPrecondition))
	cases := []struct {
		name, project, cn, builder string
	}{
		{"another project's certificate", "proj-b", "build:b1", "proj-a-amd64.builder.kiln"},
		{"not a per-build certificate", "proj-a", "admin", "proj-a-amd64.builder.kiln"},
		{"an ended build", "proj-a", "build:ended", "proj-a-amd64.builder.kiln"},
		{"a builder that does not exist", "proj-a", "build:b1", "proj-z-amd64.builder.kiln"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := e.dial(t, tc.project, tc.cn, tc.builder)
			if err == nil {
				err = roundTrip(c)
				c.Close()
			}
			if err == nil {
				t.Fatalf("%s reached the builder", tc.name)
			}
		})
	}
	// No certificate at all.
	c, err := tls.Dial("tcp", e.addr, &tls.Config{ServerName: "proj-a-amd64.builder.kiln", InsecureSkipVerify: true})
	if err == nil {
		err = roundTrip(c)
		c.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate reached the builder")
	}
}

func TestGatewayRevokeCutsLiveConnections(t *testing.T) {
	e := newEnv(t, time.Hour)
	a, err := e.dial(t, "proj-a", "build:b1", "proj-a-amd64.builder.kiln")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	other, err := e.dial(t, "proj-a", "build:b2", "proj-a-amd64.builder.kiln")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, c := range []net.Conn{a, other} {
		if err := roundTrip(c); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.gw.Revoke("b1"); n != 1 {
		t.Fatalf("Revoke closed %d connections, want 1", n)
	}
	if err := roundTrip(a); err == nil {
		t.Error("a revoked build's connection still reaches the builder")
	}
	if err := roundTrip(other); err != nil {
		t.Errorf("revoking b1 cut b2: %v", err)
	}
	if n := e.gw.RevokeProject("proj-a"); n != 1 {
		t.Errorf("RevokeProject closed %d, want 1", n)
	}
}

// From the attacker's side: a build whose Authorize said yes just as the
// build ended (Revoke came while the answer was on its way) gets no
// splice. Before, the connection was not yet registered, so Revoke missed
// it and it lived until the next recheck, long enough to Solve after the
// build's end.
func TestGatewayRevokeReachesAConnectionBeingAuthorized(t *testing.T) {
	e := newEnv(t, time.Hour)
	g := e.acc.hold("b1")
	c, err := e.dial(t, "proj-a", "build:b1", "proj-a-amd64.builder.kiln")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway never asked Authorize")
	}
	if e.gw.Active("b1") || e.gw.Conns() != 0 {
		t.Error("a connection being authorized counts as active")
	}
	if n := e.gw.Revoke("b1"); n != 1 {
		t.Errorf("Revoke closed %d connections, want the one being authorized", n)
	}
	close(g.proceed) // the answer given before the revocation: yes
	if err := roundTrip(c); err == nil {
		t.Fatal("a connection revoked while being authorized reaches the builder")
	}
	waitUntil(t, "the connection to be gone", func() bool { return e.gw.Conns() == 0 && e.b.held("proj-a-amd64.builder.kiln") == 0 })
}

// countingCerts counts the project CAs the gateway loads.
type countingCerts struct {
	gateway.Certs
	mu    sync.Mutex
	loads map[string]int
}

func (c *countingCerts) ProjectCA(projectID string) ([]byte, error) {
	c.mu.Lock()
	c.loads[projectID]++
	c.mu.Unlock()
	return c.Certs.ProjectCA(projectID)
}

// RevokeProject (the project was deleted) also forgets the project's CA
// and server certificates: they are not kept for the gateway's life.
func TestGatewayRevokeProjectForgetsItsCredentials(t *testing.T) {
	var certs *countingCerts
	e := newEnv(t, time.Hour, func(c *gateway.Config) {
		certs = &countingCerts{Certs: c.Certs, loads: map[string]int{}}
		c.Certs = certs
	})
	connect := func() {
		t.Helper()
		c, err := e.dial(t, "proj-a", "build:b1", "proj-a-amd64.builder.kiln")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c); err != nil {
			t.Fatal(err)
		}
	}
	connect()
	connect()
	if n := certs.loads["proj-a"]; n != 1 {
		t.Fatalf("project CA loaded %d times for two connections; want once", n)
	}
	e.gw.RevokeProject("proj-a")
	connect()
	if n := certs.loads["proj-a"]; n != 2 {
		t.Errorf("project CA loaded %d times; want again after RevokeProject", n)
	}
}

// What a connection's tap holds (here a Solve request whose ref never
// comes) is taken from the gateway's budget and given back when the
// connection ends.
func TestGatewayTapGivesBackItsMemory(t *testing.T) {
	e := newEnv(t, time.Hour, func(c *gateway.Config) { c.OnSolve = func(_, _, _, _, _ string) {} })
	c, err := e.dial(t, "proj-a", "build:b1", "proj-a-amd64.builder.kiln")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.Copy(io.Discard, c) // the echo builder's answer
	msg := protowire.AppendTag(nil, 2, protowire.BytesType)
	msg = protowire.AppendVarint(msg, 8<<20)
	msg = append(msg, make([]byte, 1<<20)...)
	h := newH2()
	h.solve(1)
	h.message(1, 8<<20, msg, 16<<10)
	if _, err := c.Write(h.Bytes()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the tap to hold the request", func() bool { return e.gw.TapMemoryLeft() <= gateway.TapBudgetSize-1<<20 })
	c.Close()
	waitUntil(t, "the connection's end to give the tap's memory back", func() bool {
		return e.gw.Conns() == 0 && e.gw.TapMemoryLeft() == gateway.TapBudgetSize
	})
}

// A revocation nobody announced (the token deleted on another path) ends
// the connection at the next recheck; a store hiccup does not.
func TestGatewayRecheck(t *testing.T) {
	e := newEnv(t, 50*time.Millisecond)
	c, err := e.dial(t, "proj-a", "build:b1", "proj-a-amd64.builder.kiln")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	e.acc.deny("b1", fmt.Errorf("database locked: %w", errdefs.ErrUnavailable))
	time.Sleep(300 * time.Millisecond)
	if err := roundTrip(c); err != nil {
		t.Fatalf("an unavailable store cut a live connection: %v", err)
	}
	e.acc.deny("b1", fmt.Errorf("token deleted: %w", errdefs.ErrPermission))
	deadline := time.Now().Add(5 * time.Second)
	for e.gw.Conns() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := roundTrip(c); err == nil {
		t.Fatal("the connection outlived its revocation")
	}
}

// BenchmarkSplice measures the gateway's data path: a client streaming
// through TLS and the splice to a unix socket that discards what it reads.
func BenchmarkSplice(b *testing.B) {
	dir := b.TempDir()
	ca, err := pki.Open(filepath.Join(dir, "pki"))
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "sink.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	bs := &builders{sockets: map[string][2]string{"p-amd64.builder.kiln": {"p", sock}}}
	gw, _ := gateway.New(gateway.Config{Builders: bs, Certs: ca, Authorize: func(context.Context, string, string) error { return nil }})
	tl, _ := net.Listen("tcp", "127.0.0.1:0")
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go gw.Serve(tls.Server(c, &tls.Config{GetConfigForClient: gw.TLSConfig}))
		}
	}()
	certPEM, keyPEM, _ := ca.IssueClient("p", "build:x", time.Hour)
	pair, _ := tls.X509KeyPair(certPEM, keyPEM)
	c, err := tls.Dial("tcp", tl.Addr().String(), &tls.Config{ServerName: "p-amd64.builder.kiln", InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	stream(b, c)
}

// stream writes b.N MiB to c, timed.
func stream(b *testing.B, c net.Conn) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDirectTLS is BenchmarkSplice's baseline: the same client
// streaming to a TLS server that discards what it reads (what a builder
// listening on TCP with TLS itself does).
func BenchmarkDirectTLS(b *testing.B) {
	dir := b.TempDir()
	ca, err := pki.Open(filepath.Join(dir, "pki"))
	if err != nil {
		b.Fatal(err)
	}
	certPEM, keyPEM, _ := ca.IssueServer("p", "p-amd64.builder.kiln", nil, time.Hour)
	srv, _ := tls.X509KeyPair(certPEM, keyPEM)
	tl, _ := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv}})
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	c, err := tls.Dial("tcp", tl.Addr().String(), &tls.Config{ServerName: "p-amd64.builder.kiln", InsecureSkipVerify: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	stream(b, c)
}

// pump delivers every byte in order, however the reads are cut, and passes
// the source's error on.
func TestPumpDeliversEverything(t *testing.T) {
	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var out bytes.Buffer
	if err := gateway.Pump(&out, iotest.HalfReader(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("pumped %d bytes, not the %d read", out.Len(), len(data))
	}
	boom := errors.New("boom")
	if err := gateway.Pump(io.Discard, iotest.ErrReader(boom)); !errors.Is(err, boom) {
		t.Fatalf("source error: %v", err)
	}
}
