package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// guarded is a guard in front of a handler that reads whole bodies, on a
// loopback http.Server set up as kiln's (HTTP/1.1 and h2c, a header
// timeout); it stops with the test.
type guarded struct {
	url    string
	token  string // a valid project token
	calls  atomic.Int64
	closed chan struct{}
}

func newGuarded(t *testing.T, cfg Config, inner http.Handler) *guarded {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	secret, hash := auth.NewSecret(auth.TokenProject)
	if err := st.CreateToken(ctx, auth.Token{ID: "tok_a", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "pa", SecretHash: hash, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	g := &guarded{token: secret, closed: make(chan struct{})}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.calls.Add(1)
		inner.ServeHTTP(w, r)
	})
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: newGuard(h, &auth.Authenticator{Store: st}, cfg), Protocols: protocols,
		ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { srv.Serve(l); close(g.closed) }()
	t.Cleanup(func() {
		srv.Close()
		<-g.closed
	})
	g.url = "http://" + l.Addr().String()
	return g
}

// readAllHandler reads the whole body and answers how much it read, or
// 400 with the read error.
var readAllHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "read %d", n)
})

// stalledBody yields n bytes, then blocks until released (at most 10s): a
// client that announced a large body and stopped sending it.
type stalledBody struct {
	n       int
	release chan struct{}
}

func (b *stalledBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		select {
		case <-b.release:
		case <-time.After(10 * time.Second):
		}
		return 0, io.ErrUnexpectedEOF
	}
	m := min(len(p), b.n)
	for i := range p[:m] {
		p[i] = 'x'
	}
	b.n -= m
	return m, nil
}

// An anonymous 15 MB request to a procedure that needs a token is refused
// Unauthenticated, in Connect's shape, before the server reads its body:
// the client sends 4 KiB of it and stalls, and the answer still comes.
func TestAnonymousBodyRefusedBeforeItIsRead(t *testing.T) {
	g := newGuarded(t, Config{}, readAllHandler)
	for _, c := range []struct {
		name   string
		length int64 // -1: chunked
		token  string
	}{
		{"content-length", 15 << 20, ""},
		{"chunked", -1, ""},
		{"forged token", 15 << 20, "kiln_prj_forged"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := &stalledBody{n: 4 << 10, release: make(chan struct{})}
			defer close(body.release)
			req, _ := http.NewRequest("POST", g.url+"/depot.core.v1.ProjectService/ListProjects", io.NopCloser(body))
			req.ContentLength = c.length
			req.Header.Set("Content-Type", "application/json")
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := http.DefaultClient.Do(req.WithContext(ctx))
			if err != nil {
				t.Fatalf("no answer while the body stalls: %v", err)
			}
			defer res.Body.Close()
			var e struct{ Code, Message string }
			json.NewDecoder(res.Body).Decode(&e)
			if res.StatusCode != http.StatusUnauthorized || e.Code != "unauthenticated" || !strings.Contains(e.Message, "token") {
				t.Errorf("HTTP %d %+v; want 401 unauthenticated naming the token", res.StatusCode, e)
			}
		})
	}
	if n := g.calls.Load(); n != 0 {
		t.Errorf("the handler ran %d times for anonymous requests", n)
	}
	// A caller with a token gets its body read.
	req, _ := http.NewRequest("POST", g.url+"/depot.core.v1.ProjectService/ListProjects", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+g.token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "read 2" {
		t.Errorf("authenticated call: HTTP %d %s", res.StatusCode, b)
	}
}

// The device login's procedures read anonymous bodies, at most 64 KiB.
func TestPublicProcedureBodyLimit(t *testing.T) {
	g := newGuarded(t, Config{}, readAllHandler)
	const start = "/depot.cli.v1beta1.LoginService/StartLogin"
	post := func(body io.Reader, length int64) (int, string) {
		req, _ := http.NewRequest("POST", g.url+start, body)
		req.ContentLength = length
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := post(strings.NewReader("{}"), 2); code != 200 || body != "read 2" {
		t.Errorf("small anonymous StartLogin: %d %s", code, body)
	}
	// Announced too large: refused unread, ResourceExhausted.
	stalled := &stalledBody{n: 1 << 10, release: make(chan struct{})}
	defer close(stalled.release)
	if code, body := post(io.NopCloser(stalled), 15<<20); code != http.StatusTooManyRequests || !strings.Contains(body, "resource_exhausted") || !strings.Contains(body, "65536 bytes") {
		t.Errorf("15 MB StartLogin: %d %s; want 429 resource_exhausted naming the limit", code, body)
	}
	// Streamed without a length: cut at the limit.
	if code, body := post(io.NopCloser(strings.NewReader(strings.Repeat("x", 100<<10))), -1); code != 400 || !strings.Contains(body, "too large") {
		t.Errorf("100 KiB chunked StartLogin: %d %s; want the read cut at 64 KiB", code, body)
	}
}

// slowClient is a raw connection that sent its request head and one byte
// of a body it announced as 1000 bytes.
func slowClient(addr, path, token string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	head := "POST " + path + " HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
	if token != "" {
		head += "Authorization: Bearer " + token + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\nx"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// 1,000 connections trickle one byte of their bodies and stall. Each is
// dropped once its body has sent nothing for the timeout; meanwhile, and
// after, the server answers a normal request at once; its goroutines go
// back to what they were.
func TestSlowBodiesAreDropped(t *testing.T) {
	const timeout = 800 * time.Millisecond
	g := newGuarded(t, Config{BodyTimeout: timeout}, readAllHandler)
	addr := strings.TrimPrefix(g.url, "http://")
	before := runtime.NumGoroutine()

	const n = 1000
	conns := make([]net.Conn, 0, n)
	opened := make([]time.Time, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		// Upload-style bodies and an authenticated procedure's alike.
		path, token := "/blobs/contexts/x", ""
		if i%2 == 1 {
			path, token = "/depot.core.v1.ProjectService/ListProjects", g.token
		}
		c, err := slowClient(addr, path, token)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns, opened = append(conns, c), append(opened, time.Now())
	}
	start := time.Now()

	// The server answers others while the bodies stall.
	client := &http.Client{Timeout: 2 * time.Second}
	t0 := time.Now()
	res, err := client.Post(g.url+"/blobs/ok", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatalf("a normal request while 1,000 bodies stall: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "read 5" || time.Since(t0) > time.Second {
		t.Errorf("normal request while bodies stall: %q after %v", b, time.Since(t0))
	}

	// Every slow connection is answered and closed by the server.
	var wg sync.WaitGroup
	var dropped, early atomic.Int64
	for i, c := range conns {
		wg.Add(1)
		go func(c net.Conn, opened time.Time) {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
			r := bufio.NewReader(c)
			res, err := http.ReadResponse(r, nil)
			if err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				_, err = r.ReadByte()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				dropped.Add(1)
				if time.Since(opened) < timeout*7/8 {
					early.Add(1)
				}
			}
		}(c, opened[i])
	}
	wg.Wait()
	if d := dropped.Load(); d != n {
		t.Errorf("%d of %d stalled connections were dropped within %v", d, n, timeout+10*time.Second)
	}
	if e := early.Load(); e > 0 {
		t.Errorf("%d connections dropped before the timeout", e)
	}
	t.Logf("1,000 stalled bodies dropped after %v (timeout %v)", time.Since(start), timeout)

	t0 = time.Now()
	res, err = client.Post(g.url+"/blobs/ok", "application/octet-stream", strings.NewReader("hello"))
	if err != nil || time.Since(t0) > time.Second {
		t.Fatalf("a normal request after the attack: %v after %v", err, time.Since(t0))
	}
	res.Body.Close()
	client.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before+20 {
		t.Errorf("goroutines: %d before the attack, %d after", before, after)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// trickle is a body that sends one byte every gap, n times.
type trickle struct {
	n   int
	gap time.Duration
}

func (b *trickle) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(b.gap)
	b.n--
	p[0] = 'x'
	return 1, nil
}

// Long bodies that keep moving are not cut, however long they take; client
// streams may pause longer than BodyTimeout; and a handler that has read
// its whole body may keep working past the timeout (the deadline must not
// outlive the body and cancel the request).
func TestSteadyBodiesAndStreamsSurvive(t *testing.T) {
	const timeout = 400 * time.Millisecond
	var ctxErr atomic.Value
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("work") != "" {
			time.Sleep(3 * timeout)
			ctxErr.Store(fmt.Sprint(r.Context().Err()))
		}
		fmt.Fprintf(w, "read %d", n)
	})
	g := newGuarded(t, Config{BodyTimeout: timeout, StreamBodyTimeout: 10 * timeout}, inner)
	post := func(path, token string, body io.Reader) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", g.url+path, body)
		req.Header.Set("Content-Type", "application/connect+json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	// 3× the timeout in all, each gap well under it.
	if code, body := post("/blobs/x", "", &trickle{n: 12, gap: timeout / 4}); code != 200 || body != "read 12" {
		t.Errorf("steady slow body: %d %s", code, body)
	}
	// A gap longer than BodyTimeout: cut, naming the problem.
	if code, body := post("/blobs/x", "", &trickle{n: 2, gap: 2 * timeout}); code != 400 || !strings.Contains(body, "sent nothing for") {
		t.Errorf("stalled body: %d %s; want it cut", code, body)
	}
	// The same gap in a client stream: kept.
	if code, body := post("/depot.cli.v1.BuildService/ReportStatusStream", g.token, &trickle{n: 2, gap: 2 * timeout}); code != 200 || body != "read 2" {
		t.Errorf("client stream with a pause: %d %s", code, body)
	}
	// Work after the body is done outlasts the deadline.
	if code, body := post("/blobs/x?work=1", "", strings.NewReader("abc")); code != 200 || body != "read 3" {
		t.Errorf("handler working after its body: %d %s", code, body)
	}
	if e := ctxErr.Load(); e != "<nil>" {
		t.Errorf("the request's context ended while its handler worked: %v", e)
	}
}

// Every client-streaming method of the services kiln links in is listed
// in clientStreams (or its bodies would be cut between messages).
func TestClientStreamsListed(t *testing.T) {
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		pkg := string(fd.Package())
		if !strings.HasPrefix(pkg, "depot.") && !strings.HasPrefix(pkg, "kiln.") {
			return true
		}
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				proc := "/" + string(sd.FullName()) + "/" + string(md.Name())
				if md.IsStreamingClient() && !clientStreams[proc] {
					t.Errorf("%s streams from the client but is not in clientStreams", proc)
				}
				if publicProcedures[proc] && md.IsStreamingClient() {
					t.Errorf("%s is public and streams from the client", proc)
				}
			}
		}
		return true
	})
	for _, p := range []string{"/depot.cli.v1.BuildService/ReportStatusStream", "/depot.core.v1.ProjectService/ListProjects"} {
		if !knownProcedure(p) {
			t.Errorf("knownProcedure(%s) = false", p)
		}
	}
	for _, p := range []string{"/depot.core.v1.ProjectService/Nope", "/x.Y/\n", "/a.b/c"} {
		if knownProcedure(p) {
			t.Errorf("knownProcedure(%q) = true", p)
		}
	}
}

// Over h2c a stalled body is cut the same way (the stream is reset), and
// the connection's other streams go on.
func TestSlowBodyOverH2C(t *testing.T) {
	const timeout = 500 * time.Millisecond
	cut := make(chan error, 1)
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/blobs/stall" {
			cut <- err
		}
		fmt.Fprintf(w, "read %d", n)
	})
	g := newGuarded(t, Config{BodyTimeout: timeout}, inner)
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protocols}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { pw.Write([]byte("x")) }() // one byte, then nothing
	start := time.Now()
	go func() {
		req, _ := http.NewRequest("POST", g.url+"/blobs/stall", pr)
		if res, err := client.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	select {
	case err := <-cut:
		if d := time.Since(start); !errors.Is(err, os.ErrDeadlineExceeded) || d < timeout*7/8 || d > timeout+2*time.Second {
			t.Errorf("stalled h2c body: read ended after %v with %v; want a deadline after about %v", d, err, timeout)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled h2c body was not cut")
	}
	res, err := client.Post(g.url+"/blobs/ok", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.ProtoMajor != 2 || string(b) != "read 5" {
		t.Errorf("h2c request after a cut stream: %s %q", res.Proto, b)
	}
}
