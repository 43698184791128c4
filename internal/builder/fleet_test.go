package builder

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// These tests run the real buildkitd: as root, with runc on PATH, from
// KILN_BUILDKITD or bin/buildkitd at the repository root. A missing binary
// fails them unless KILN_SKIP_MISSING=1.

func buildkitdPath(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t, "buildkitd's OCI worker")
	if p := os.Getenv("KILN_BUILDKITD"); p != "" {
		return p
	}
	return testenv.Bin(t, "buildkitd")
}

type testEnv struct {
	fleet *Fleet
	ca    *pki.Authority
	root  string
	gw    string // address of a builder gateway in front of the fleet, as kiln serve has
}

func newEnv(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	bin := buildkitdPath(t)
	base := t.TempDir()
	ca, err := pki.Open(filepath.Join(base, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Root:          filepath.Join(base, "builders"),
		BuildkitdPath: bin,
		CA:            ca,
		StartTimeout:  60 * time.Second,
		// Not the default pool: kiln serve may run beside these tests.
		Network: Network{Pool: netip.MustParsePrefix("10.60.0.0/20")},
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := NewFleet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := f.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		// Nothing may outlive Close.
		if pids := processesUnder(f.root); len(pids) > 0 {
			t.Errorf("processes left under %s after Close: %v", f.root, pids)
		}
		if mps, _ := mountsUnder(f.root); len(mps) > 0 {
			t.Errorf("mounts left after Close: %v", mps)
		}
	})
	return &testEnv{fleet: f, ca: ca, root: f.root, gw: serveGateway(t, f, ca)}
}

// serveGateway puts a builder gateway in front of f on a loopback port, the
// way kiln serve's listener does, letting every per-build certificate of a
// builder's project through.
func serveGateway(t *testing.T, f *Fleet, ca *pki.Authority) string {
	t.Helper()
	gw, err := gateway.New(gateway.Config{Builders: f, Certs: ca,
		Authorize: func(context.Context, string, string) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
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
	return l.Addr().String()
}

// testWriter sends the fleet's log to t.Log, while the test runs.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// dial connects to ep the way a remote build client would: through the
// gateway, TLS with a client certificate, verifying the server against the
// project CA.
func dial(t *testing.T, ctx context.Context, env *testEnv, ep Endpoint, certPEM, keyPEM []byte) *client.Client {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(ep.CACertPEM)) {
		t.Fatal("bad CA PEM in endpoint")
	}
	tc := &tls.Config{RootCAs: roots, ServerName: ep.ServerName, NextProtos: []string{"h2"}}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		// Always present it, even when the server's list of acceptable CAs
		// does not name its issuer: the server must do the refusing.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	addr := env.gw
	c, err := client.New(ctx, "", client.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		d := tls.Dialer{Config: tc}
		return d.DialContext(ctx, "tcp", addr)
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func clientFor(t *testing.T, ctx context.Context, env *testEnv, project string, ep Endpoint) *client.Client {
	t.Helper()
	certPEM, keyPEM, err := env.ca.IssueClient(project, "build:test", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return dial(t, ctx, env, ep, certPEM, keyPEM)
}

// solveRun runs args in a scratch image holding only busybox, the way a
// remote build would: the binary arrives through a local build context.
func solveRun(ctx context.Context, t *testing.T, c *client.Client, args ...string) error {
	t.Helper()
	ctxDir := t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed: %v", err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	st := llb.Scratch().
		File(llb.Copy(llb.Local("ctx"), "busybox", "/bin/busybox", &llb.CopyInfo{CreateDestPath: true})).
		Run(llb.Args(args), llb.Network(llb.NetModeNone)).Root()
	def, err := st.Marshal(ctx, llb.LinuxAmd64)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fsutil.NewFS(ctxDir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Solve(ctx, def, client.SolveOpt{LocalMounts: map[string]fsutil.FS{"ctx": fs}}, nil)
	return err
}

func status(t *testing.T, f *Fleet, project, platform string) Status {
	t.Helper()
	for _, s := range f.Status() {
		if s.ProjectID == project && s.Platform == platform {
			return s
		}
	}
	t.Fatalf("no status for %s/%s", project, platform)
	return Status{}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// buildkitdPIDs lists buildkitd processes whose cwd is dir.
func buildkitdPIDs(dir string) []int {
	var out []int
	for _, pid := range processesUnder(dir) {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		cwd, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
		if filepath.Base(exe) == "buildkitd" && cwd == dir {
			out = append(out, pid)
		}
	}
	return out
}

func TestAcquireTLSAndProjectIsolation(t *testing.T) {
	env := newEnv(t, nil)
	ctx := ctxTimeout(t, 2*time.Minute)
	spec := Spec{ProjectID: "proj-a", Platform: "linux/amd64", KeepBytes: 3 << 30, KeepDuration: 72 * time.Hour}

	ep, ready, err := env.fleet.Ensure(spec)
	if err != nil {
		t.Fatal(err)
	}
	if ready {
		t.Fatal("ready before any start")
	}
	if ep.Socket == "" || ep.ServerName != "proj-a-amd64.builder.kiln" || ep.CACertPEM == "" {
		t.Fatalf("endpoint while starting: %+v", ep)
	}
	ep2, err := env.fleet.Acquire(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ep2 != ep {
		t.Fatalf("endpoint changed: %+v vs %+v", ep2, ep)
	}
	if _, ready, _ := env.fleet.Ensure(spec); !ready {
		t.Fatal("Ensure not ready after Acquire")
	}

	st := status(t, env.fleet, "proj-a", "linux/amd64")
	if st.State != StateReady || st.PID == 0 || st.Socket != ep.Socket || st.Bridge == "" || st.Subnet == "" {
		t.Fatalf("status: %+v", st)
	}
	for _, p := range []string{"state", "tmp", "buildkitd.toml", "buildkitd.log"} {
		if _, err := os.Stat(filepath.Join(st.StateDir, p)); err != nil {
			t.Errorf("builder dir: %v", err)
		}
	}

	c := clientFor(t, ctx, env, "proj-a", ep)
	ws, err := c.ListWorkers(ctx)
	if err != nil {
		t.Fatalf("ListWorkers with project A's client cert: %v", err)
	}
	if len(ws) != 1 {
		t.Fatalf("%d workers, want 1", len(ws))
	}
	w := ws[0]
	if len(w.Platforms) == 0 || w.Platforms[0].Architecture != "amd64" {
		t.Errorf("worker platforms %v", w.Platforms)
	}
	if !strings.Contains(w.Labels["org.mobyproject.buildkit.worker.snapshotter"], "overlayfs") {
		t.Errorf("snapshotter label: %v", w.Labels)
	}
	// The GC policy from the Spec reached buildkitd (so the TOML names are right).
	var sawCap, sawDuration bool
	for _, p := range w.GCPolicy {
		sawCap = sawCap || p.MaxUsedSpace == 3<<30
		sawDuration = sawDuration || (p.KeepDuration == 72*time.Hour && len(p.Filter) == 0)
	}
	if !sawCap || !sawDuration {
		t.Errorf("GC policy not applied: %+v", w.GCPolicy)
	}

	// A client certificate for another project is refused, and so is none.
	other := clientFor(t, ctx, env, "proj-b", ep)
	if _, err := other.ListWorkers(ctx); err == nil {
		t.Fatal("project B's client cert accepted by project A's builder")
	} else {
		t.Logf("other project's cert refused: %v", err)
	}
	anon := dial(t, ctx, env, ep, nil, nil)
	if _, err := anon.ListWorkers(ctx); err == nil {
		t.Fatal("client without certificate accepted")
	}
}

func TestConcurrentAcquireSharesOneBuilder(t *testing.T) {
	env := newEnv(t, nil)
	ctx := ctxTimeout(t, 2*time.Minute)
	spec := Spec{ProjectID: "proj", Platform: "linux/amd64"}

	const n = 6
	eps := make([]Endpoint, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			eps[i], errs[i] = env.fleet.Acquire(ctx, spec)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if eps[i] != eps[0] {
			t.Fatalf("endpoints differ: %+v vs %+v", eps[i], eps[0])
		}
	}
	st := status(t, env.fleet, "proj", "linux/amd64")
	if pids := buildkitdPIDs(st.StateDir); len(pids) != 1 || pids[0] != st.PID {
		t.Fatalf("buildkitd processes %v, status pid %d", pids, st.PID)
	}
	if got := len(env.fleet.Status()); got != 1 {
		t.Fatalf("%d builders", got)
	}
}

func TestCrashCleansUpAndRestarts(t *testing.T) {
	type exit struct {
		project, platform string
		leases            []string
		err               error
		procs             []int
		mounts            []string
		containers        []runcContainer
	}
	exits := make(chan exit, 4)
	var dirMu sync.Mutex
	var builderDir string
	env := newEnv(t, func(c *Config) {
		c.OnExit = func(project, platform string, leases []string, err error) {
			// What is left must be checked now: the restart follows OnExit.
			dirMu.Lock()
			dir := builderDir
			dirMu.Unlock()
			mps, _ := mountsUnder(dir)
			exits <- exit{project, platform, leases, err, processesUnder(dir), mps, containersUnder(dir)}
		}
	})
	ctx := ctxTimeout(t, 3*time.Minute)
	spec := Spec{ProjectID: "crashy", Platform: "linux/amd64"}
	ep, err := env.fleet.Acquire(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	st := status(t, env.fleet, "crashy", "linux/amd64")
	dirMu.Lock()
	builderDir = st.StateDir
	dirMu.Unlock()
	env.fleet.Lease("crashy", "linux/amd64", "build-1")

	c := clientFor(t, ctx, env, "crashy", ep)
	solveErr := make(chan error, 1)
	go func() { solveErr <- solveRun(ctx, t, c, "/bin/busybox", "sleep", "300") }()

	var sleepPID int
	waitFor(t, 60*time.Second, "the RUN step's sleep process", func() bool {
		for _, pid := range processesUnder(st.StateDir) {
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			if bytes.Equal(cmdline, []byte("/bin/busybox\x00sleep\x00300\x00")) {
				sleepPID = pid
				return true
			}
		}
		select {
		case err := <-solveErr:
			t.Fatalf("solve ended early: %v", err)
		default:
		}
		return false
	})
	sleepPGID, _ := unix.Getpgid(sleepPID)
	root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", sleepPID))
	mps, _ := mountsUnder(st.StateDir)
	t.Logf("sleep pid %d pgid %d (buildkitd pgid %d), root %s; %d mounts under the builder dir", sleepPID, sleepPGID, st.PID, root, len(mps))
	if cs := containersUnder(st.StateDir); len(cs) != 1 {
		t.Errorf("runc containers under the builder dir while running: %+v", cs)
	}
	if sleepPGID == st.PID {
		t.Log("the RUN process stayed in buildkitd's process group")
	} else {
		t.Log("the RUN process escaped buildkitd's process group")
	}

	if err := unix.Kill(st.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var e exit
	select {
	case e = <-exits:
	case <-time.After(5 * time.Second):
		t.Fatal("OnExit not called within 5s of the crash")
	}
	if e.project != "crashy" || e.platform != "linux/amd64" || len(e.leases) != 1 || e.leases[0] != "build-1" {
		t.Fatalf("OnExit(%q, %q, %v)", e.project, e.platform, e.leases)
	}
	if !errors.Is(e.err, errdefs.ErrUnavailable) {
		t.Errorf("OnExit err %v does not wrap ErrUnavailable", e.err)
	}
	t.Logf("OnExit err: %v", e.err)
	if len(e.procs) != 0 {
		t.Errorf("processes left under the builder dir after the crash: %v", e.procs)
	}
	if len(e.mounts) != 0 {
		t.Errorf("mounts left under the builder dir after the crash: %v", e.mounts)
	}
	if len(e.containers) != 0 {
		t.Errorf("runc containers left after the crash: %+v", e.containers)
	}
	if err := unix.Kill(sleepPID, 0); err == nil {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", sleepPID))
		if !strings.Contains(string(stat), ") Z ") {
			t.Errorf("sleep %d still alive: %s", sleepPID, stat)
		}
	}
	select {
	case err := <-solveErr:
		if err == nil {
			t.Error("solve succeeded on a killed builder")
		}
	case <-time.After(30 * time.Second):
		t.Error("solve did not fail after the crash")
	}
	if st := status(t, env.fleet, "crashy", "linux/amd64"); len(st.Leases) != 0 {
		t.Errorf("leases not cleared: %v", st.Leases)
	}

	// It comes back by itself and builds again.
	waitFor(t, 60*time.Second, "restart", func() bool {
		return status(t, env.fleet, "crashy", "linux/amd64").State == StateReady
	})
	ep2, err := env.fleet.Acquire(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if st2 := status(t, env.fleet, "crashy", "linux/amd64"); st2.PID == st.PID {
		t.Fatal("same pid after restart")
	}
	c2 := clientFor(t, ctx, env, "crashy", ep2)
	if err := solveRun(ctx, t, c2, "/bin/busybox", "sh", "-c", "echo again "+strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
		t.Fatalf("solve after restart: %v", err)
	}
}

func TestIdleStopKeepsState(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.IdleTTL = time.Second })
	ctx := ctxTimeout(t, 2*time.Minute)
	spec := Spec{ProjectID: "idle", Platform: "linux/amd64"}
	ep, err := env.fleet.Acquire(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, ctx, env, "idle", ep)
	if err := solveRun(ctx, t, c, "/bin/busybox", "true"); err != nil {
		t.Fatal(err)
	}

	// A lease holds it up past the TTL.
	env.fleet.Lease("idle", "linux/amd64", "b1")
	time.Sleep(2 * time.Second)
	if st := status(t, env.fleet, "idle", "linux/amd64"); st.State != StateReady {
		t.Fatalf("leased builder stopped: %+v", st)
	}
	env.fleet.Release("idle", "linux/amd64", "b1")
	env.fleet.Release("idle", "linux/amd64", "unknown") // no-op

	// So does an open gateway connection without a lease: a client
	// mid-solve whose build the control plane lost track of.
	time.Sleep(2 * time.Second)
	if st := status(t, env.fleet, "idle", "linux/amd64"); st.State != StateReady || st.Conns == 0 {
		t.Fatalf("builder with an open gateway connection stopped: %+v", st)
	}
	c.Close()

	waitFor(t, 30*time.Second, "idle stop", func() bool {
		st := status(t, env.fleet, "idle", "linux/amd64")
		return st.State == StateStopped && st.PID == 0
	})
	st := status(t, env.fleet, "idle", "linux/amd64")
	if pids := processesUnder(st.StateDir); len(pids) != 0 {
		t.Fatalf("processes left after idle stop: %v", pids)
	}
	if _, err := os.Stat(filepath.Join(st.StateDir, "state", "cache.db")); err != nil {
		t.Fatalf("state not kept: %v", err)
	}

	ep2, err := env.fleet.Acquire(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	c2 := clientFor(t, ctx, env, "idle", ep2)
	du, err := c2.DiskUsage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(du) == 0 {
		t.Fatal("cache empty after an idle stop")
	}
}

// A stopped builder gives its build network back: a pool bounds the
// builders running at once, not those started since kiln serve did. (A
// /24 pool has one network.)
func TestStoppedBuilderGivesBackItsNetwork(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.IdleTTL = time.Second
		c.Network = Network{Pool: netip.MustParsePrefix("10.60.16.0/24")}
	})
	ctx := ctxTimeout(t, 3*time.Minute)
	for _, project := range []string{"first", "second", "first"} {
		ep, err := env.fleet.Acquire(ctx, Spec{ProjectID: project, Platform: "linux/amd64"})
		if err != nil {
			t.Fatalf("%s builder: %v", project, err)
		}
		c := clientFor(t, ctx, env, project, ep)
		// A step on the build network makes its bridge.
		if err := solveRun(ctx, t, c, "/bin/busybox", "true"); err != nil {
			t.Fatalf("%s: %v", project, err)
		}
		c.Close()
		waitFor(t, 30*time.Second, project+"'s idle stop", func() bool {
			st := status(t, env.fleet, project, "linux/amd64")
			return st.State == StateStopped && st.PID == 0 && st.Bridge == ""
		})
	}
	if _, err := net.InterfaceByName(env.fleet.cfg.Network.bridge(0)); err == nil {
		t.Errorf("the stopped builders' bridge %s is still there", env.fleet.cfg.Network.bridge(0))
	}
}

func TestResetRemovesState(t *testing.T) {
	env := newEnv(t, nil)
	ctx := ctxTimeout(t, 2*time.Minute)
	spec := Spec{ProjectID: "wipe", Platform: "linux/amd64"}
	if _, err := env.fleet.Acquire(ctx, spec); err != nil {
		t.Fatal(err)
	}
	st := status(t, env.fleet, "wipe", "linux/amd64")
	if err := env.fleet.Reset(ctx, "wipe"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(env.root, "wipe")); !os.IsNotExist(err) {
		t.Fatalf("project dir still there: %v", err)
	}
	if pids := processesUnder(st.StateDir); len(pids) != 0 {
		t.Fatalf("processes left after reset: %v", pids)
	}
	if st := status(t, env.fleet, "wipe", "linux/amd64"); st.State != StateStopped || st.PID != 0 {
		t.Fatalf("status after reset: %+v", st)
	}
	if _, err := env.fleet.Acquire(ctx, spec); err != nil {
		t.Fatalf("Acquire after reset: %v", err)
	}
	if err := env.fleet.Reset(ctx, "Not_Valid"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Reset with a bad id: %v", err)
	}
}

// A builder that fails to start says so to the client without naming a
// server path or quoting buildkitd's log (full of them); the server log
// has both.
func TestStartFailureNamesNoPath(t *testing.T) {
	// A "buildkitd" that exits at once.
	fake := filepath.Join(t.TempDir(), "buildkitd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'fake buildkitd: boom in /secret/path' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KILN_BUILDKITD", fake)
	var logged strings.Builder
	var logMu sync.Mutex
	env := newEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			logMu.Lock()
			defer logMu.Unlock()
			return logged.Write(p)
		}), nil))
	})
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := env.fleet.Acquire(ctx, Spec{ProjectID: "p", Platform: "linux/amd64"})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "the builder for project p (linux/amd64) failed to start") ||
		!strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Acquire err = %v", err)
	}
	if strings.Contains(err.Error(), env.root) || strings.Contains(err.Error(), "/secret") || strings.Contains(err.Error(), "buildkitd.log") {
		t.Errorf("Acquire err names a server path or quotes the log: %v", err)
	}
	logMu.Lock()
	if l := logged.String(); !strings.Contains(l, "buildkitd.log") || !strings.Contains(l, "boom") {
		t.Errorf("the server log lacks the log path or its last line:\n%s", l)
	}
	logMu.Unlock()
	// Within the backoff, Ensure reports the failure instead of relaunching.
	if _, _, err := env.fleet.Ensure(Spec{ProjectID: "p", Platform: "linux/amd64"}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Ensure err = %v", err)
	}
	if st := status(t, env.fleet, "p", "linux/amd64"); st.State != StateCrashed {
		t.Fatalf("state %s", st.State)
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// A stopped builder in use is killed (whole tree) and restarted after the
// stall timeout; its builds fail with "stopped responding". An idle
// stopped one is left alone: nobody waits on it.
func TestStalledBuilderIsRecycled(t *testing.T) {
	exits := make(chan error, 4)
	var leases []string
	var leasesMu sync.Mutex
	env := newEnv(t, func(c *Config) {
		c.StallTimeout = 3 * time.Second
		c.OnExit = func(project, platform string, l []string, err error) {
			leasesMu.Lock()
			leases = append(leases, l...)
			leasesMu.Unlock()
			exits <- err
		}
	})
	ctx := ctxTimeout(t, 3*time.Minute)
	spec := Spec{ProjectID: "stall", Platform: "linux/amd64"}
	if _, err := env.fleet.Acquire(ctx, spec); err != nil {
		t.Fatal(err)
	}
	st := status(t, env.fleet, "stall", "linux/amd64")
	if err := unix.Kill(st.PID, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(st.PID, unix.SIGCONT) })
	time.Sleep(5 * time.Second)
	if now := status(t, env.fleet, "stall", "linux/amd64"); now.PID != st.PID {
		t.Fatalf("an idle stopped builder was recycled: %+v", now)
	}

	env.fleet.Lease("stall", "linux/amd64", "build-1")
	stalledAt := time.Now()
	var err error
	select {
	case err = <-exits:
	case <-time.After(20 * time.Second):
		t.Fatal("the stopped builder in use was not recycled within 20s")
	}
	t.Logf("recycled %s after the lease: %v", time.Since(stalledAt).Round(time.Millisecond), err)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "the builder for project stall (linux/amd64) stopped responding") {
		t.Errorf("OnExit err = %v", err)
	}
	leasesMu.Lock()
	if len(leases) != 1 || leases[0] != "build-1" {
		t.Errorf("OnExit leases %v, want [build-1]", leases)
	}
	leasesMu.Unlock()
	if pids := buildkitdPIDs(st.StateDir); slices.Contains(pids, st.PID) {
		t.Errorf("the stopped buildkitd %d is still there", st.PID)
	}
	waitFor(t, 60*time.Second, "restart", func() bool {
		now := status(t, env.fleet, "stall", "linux/amd64")
		return now.State == StateReady && now.PID != st.PID
	})
	if ok := env.fleet.Recycle("stall", "linux/amd64", errors.New("test")); !ok {
		t.Error("Recycle of a ready builder did nothing")
	}
	if ok := env.fleet.Recycle("nobody", "linux/amd64", errors.New("test")); ok {
		t.Error("Recycle of an unknown builder did something")
	}
}

func TestStartTimeout(t *testing.T) {
	// A "buildkitd" that never answers.
	fake := filepath.Join(t.TempDir(), "buildkitd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KILN_BUILDKITD", fake)
	env := newEnv(t, func(c *Config) { c.StartTimeout = 500 * time.Millisecond })
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := env.fleet.Acquire(ctx, Spec{ProjectID: "p", Platform: "linux/amd64"})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "not ready within") {
		t.Fatalf("Acquire err = %v", err)
	}
	st := status(t, env.fleet, "p", "linux/amd64")
	if st.State != StateCrashed || st.PID != 0 {
		t.Fatalf("status %+v", st)
	}
	if pids := processesUnder(st.StateDir); len(pids) != 0 {
		t.Fatalf("timed-out process not killed: %v", pids)
	}
}

func TestEnsureValidates(t *testing.T) {
	env := newEnv(t, nil)
	for _, s := range []Spec{
		{ProjectID: "p", Platform: "windows/amd64"},
		{ProjectID: "p", Platform: "amd64"},
		{ProjectID: "P!", Platform: "linux/amd64"},
		{ProjectID: "p", Platform: "linux/amd64", KeepBytes: -1},
	} {
		if _, _, err := env.fleet.Ensure(s); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Ensure(%+v) = %v, want ErrInvalid", s, err)
		}
	}
	if len(env.fleet.Status()) != 0 {
		t.Fatal("invalid specs created builders")
	}
}

// Platforms of one project are separate builders; a Root too long for unix
// sockets moves the sockets elsewhere.
func TestPlatformsAndLongRoot(t *testing.T) {
	env := newEnv(t, func(c *Config) {
		c.Root = filepath.Join(c.Root, strings.Repeat("long-directory-name-", 5))
	})
	ctx := ctxTimeout(t, 2*time.Minute)
	var eps [2]Endpoint
	var errs [2]error
	var wg sync.WaitGroup
	for i, p := range []string{"linux/amd64", "linux/arm64"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			eps[i], errs[i] = env.fleet.Acquire(ctx, Spec{ProjectID: "multi", Platform: p})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if eps[0].Socket == eps[1].Socket || eps[1].ServerName != "multi-arm64.builder.kiln" {
		t.Fatalf("endpoints %+v", eps)
	}
	st := status(t, env.fleet, "multi", "linux/arm64")
	if len(filepath.Join(st.StateDir, "buildkitd.sock")) <= maxSocketPath {
		t.Fatalf("root not long enough for this test: %s", st.StateDir)
	}
	ws, err := clientFor(t, ctx, env, "multi", eps[1]).ListWorkers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || len(ws[0].Platforms) == 0 || ws[0].Platforms[0].Architecture != "arm64" {
		t.Fatalf("arm64 builder's workers: %+v", ws)
	}
	if a, b := status(t, env.fleet, "multi", "linux/amd64"), st; a.PID == b.PID || a.StateDir == b.StateDir {
		t.Fatalf("platforms share a builder: %+v %+v", a, b)
	}
}
