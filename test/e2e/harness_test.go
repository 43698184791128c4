// Package e2e drives kiln as a user does: the real kiln binary, real
// buildkitd + runc builders, and real clients (kiln's CLI, depot-go, plain
// HTTP). Every component is required: a missing one fails the run, unless
// a developer opts out locally with KILN_SKIP_MISSING=1.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/internal/kubetest"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
	"github.com/kiln-dev/kiln/internal/testenv"
)

var (
	repoRoot  string
	kilnBin   string
	buildkitd string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if repoRoot, err = testenv.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	buildkitd = os.Getenv("KILN_BUILDKITD")
	if buildkitd == "" {
		buildkitd = filepath.Join(repoRoot, "bin", "buildkitd")
	}
	var missing []string
	if _, err := os.Stat(buildkitd); err != nil {
		missing = append(missing, "buildkitd at "+buildkitd+" (run hack/setup.sh)")
	}
	// Builders run the runc beside buildkitd (kiln puts buildkitd's directory
	// first on its PATH): hack/setup.sh builds it with seccomp, at or above
	// the security floor; Debian's older runc on PATH must not stand in.
	if _, err := os.Stat(filepath.Join(filepath.Dir(buildkitd), "runc")); err != nil {
		missing = append(missing, "runc at "+filepath.Join(filepath.Dir(buildkitd), "runc")+" (run hack/setup.sh)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		missing = append(missing, "/bin/busybox (apt-get install busybox-static)")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (builders run rootful buildkitd)")
	}
	if len(missing) > 0 {
		if testenv.SkipMissing() {
			fmt.Fprintf(os.Stderr, "e2e: SKIPPING end-to-end tests (KILN_SKIP_MISSING=1); missing: %s\n", strings.Join(missing, ", "))
			return 0
		}
		fmt.Fprintf(os.Stderr, "e2e: missing components: %s\nRun hack/setup.sh, or set KILN_SKIP_MISSING=1 to skip locally.\n", strings.Join(missing, ", "))
		return 1
	}
	tmp, err := os.MkdirTemp("", "kiln-e2e-bin")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(tmp)
	if kilnBin, err = kilntest.BuildKiln(context.Background(), repoRoot, tmp); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build kiln: %v\n", err)
		return 1
	}
	flag.Parse()
	setParallel()
	code := pgtest.Run(m) // stops the Postgres a test started, if any
	kubetest.Stop()       // and the Kubernetes cluster
	if !stopShared() && code == 0 {
		code = 1
	}
	// After the whole suite, faults included: no builder process or mount
	// of any of this run's servers is left on the machine.
	if left := leftBehind(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: left behind after every server stopped:\n  %s\n", strings.Join(left, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	return code
}

// runTag starts the name of every data directory this run makes, so that
// what it leaves behind is told apart from another run's.
var runTag = "kiln-e2e-" + strconv.Itoa(os.Getpid()) + "-"

// setParallel bounds how many tests marked parallel run at once: each runs
// its own builders (buildkitd processes) and builds, and a 2-core machine
// is saturated by a few. KILN_E2E_PARALLEL sets the bound (default 3); an
// explicit -parallel flag wins.
func setParallel() {
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if explicit {
		return
	}
	n := 3
	if v := os.Getenv("KILN_E2E_PARALLEL"); v != "" {
		if i, err := strconv.Atoi(v); err == nil && i > 0 {
			n = i
		} else {
			fmt.Fprintf(os.Stderr, "e2e: KILN_E2E_PARALLEL=%q is not a positive number; using %d\n", v, n)
		}
	}
	flag.Set("test.parallel", strconv.Itoa(n))
}

// server is one `kiln serve` process on a loopback port with its own data
// directory.
type server struct {
	URL    string
	Data   string
	Token  string // the bootstrap admin (org) token
	cmd    *exec.Cmd
	exited <-chan struct{} // closed when cmd has exited
	log    string
	addr   string
	args   []string
	env    []string
	// autoPool: the harness chose --builder-subnets (the last argument)
	// and may choose again when another kiln process holds it.
	autoPool    bool
	poolRetries int
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := loopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// loopbackAddr is a loopback address no one listens on right now.
func loopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// pools are the --builder-subnets this test binary's servers hold, as
// indexes of the 2048 /20s of 10.128.0.0/9: servers running at once
// (parallel tests) never draw overlapping pools, and kiln serve's own
// refusal (another test binary's server holds it) makes start draw again.
var pools struct {
	sync.Mutex
	held map[int]bool
	used []netip.Prefix // every pool handed out, for leftBehind
}

// Pool sizes, in /20s of 16 builders (one /24 each). The shared server
// gets 64 builders: every test using it builds in projects of its own.
const (
	ownPool    = 1 // a /20
	sharedPool = 4 // a /18
)

// nextBuilderSubnets is a random pool of n /20s (n a power of two) of
// 10.128.0.0/9 that overlaps no pool another server of this test binary
// holds; releasePool gives it back.
func nextBuilderSubnets(n int) string {
	pools.Lock()
	defer pools.Unlock()
	if pools.held == nil {
		pools.held = map[int]bool{}
	}
	for {
		first := rand.IntN(2048/n) * n
		free := true
		for i := first; i < first+n; i++ {
			free = free && !pools.held[i]
		}
		if !free {
			continue
		}
		for i := first; i < first+n; i++ {
			pools.held[i] = true
		}
		p := fmt.Sprintf("10.%d.%d.0/%d", 128+first/16, (first%16)*16, 20-bits.Len(uint(n))+1)
		pools.used = append(pools.used, netip.MustParsePrefix(p))
		return p
	}
}

func releasePool(p string) {
	prefix := netip.MustParsePrefix(p)
	ip := prefix.Addr().As4()
	first := (int(ip[1])-128)*16 + int(ip[2])/16
	pools.Lock()
	defer pools.Unlock()
	for i := first; i < first+1<<(20-prefix.Bits()); i++ {
		delete(pools.held, i)
	}
}

// startServer runs kiln serve; it is stopped (SIGTERM, then SIGKILL) when
// the test ends, and its log is printed if the test failed. A test that
// needs no flags, restarts or server-wide state uses sharedServer instead.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	return startServerEnv(t, nil, args...)
}

// startServerEnv is startServer with extra environment variables.
func startServerEnv(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	s, err := newServer(env, args, ownPool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.stop(t)
		s.checkEnded(t)
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("kiln serve log:\n%s", tail(string(b), 12000))
		}
		s.remove()
	})
	s.start(t)
	if err := s.readToken(); err != nil {
		t.Error(err)
	}
	return s
}

// shared is the one `kiln serve` with default flags that the tests which
// need nothing more share, each in projects of its own (projects are
// isolated by design, so sharing a server is what users do). It is started
// by the first test that asks and stopped by TestMain.
var shared struct {
	once sync.Once
	s    *server
	err  error
}

// sharedServer returns the shared server, starting it on first use. A test
// using it must scope what it asserts to its own projects and tokens, never
// count server-wide things (all projects, the audit log, all builders), and
// never stop, restart or reconfigure it.
func sharedServer(t *testing.T) *server {
	t.Helper()
	shared.once.Do(func() {
		s, err := newServer(nil, nil, sharedPool)
		if err != nil {
			shared.err = err
			return
		}
		if err = s.boot(); err == nil {
			err = s.readToken()
		}
		if err != nil {
			s.close()
			s.remove()
			shared.err = err
			return
		}
		shared.s = s
	})
	if shared.err != nil {
		t.Fatalf("the shared kiln serve: %v", shared.err)
	}
	s := shared.s
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("shared kiln serve log (all tests' requests):\n%s", tail(string(b), 12000))
		}
	})
	return s
}

// stopShared stops the shared server, if a test started it. It reports
// false if the server did not stop cleanly or left a build running.
func stopShared() bool {
	s := shared.s
	if s == nil {
		return true
	}
	defer s.remove()
	if err := s.close(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: the shared kiln serve: %v\n", err)
		return false
	}
	running, err := s.runningBuilds()
	if err != nil || len(running) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: the shared kiln serve stopped with builds still recorded running (%v):\n  %s\n", err, strings.Join(running, "\n  "))
		return false
	}
	return true
}

// newServer prepares a server on a free loopback port with a new data
// directory; start or boot runs it.
func newServer(env, args []string, pool int) (*server, error) {
	// A short data path keeps builders' unix socket paths within limits.
	data, err := os.MkdirTemp("", runTag)
	if err != nil {
		return nil, err
	}
	addr, err := loopbackAddr()
	if err != nil {
		os.RemoveAll(data)
		return nil, err
	}
	autoPool := !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--builder-subnets") })
	if autoPool {
		args = append(slices.Clip(args), "--builder-subnets", nextBuilderSubnets(pool))
	}
	return &server{URL: "http://" + addr, Data: data, log: filepath.Join(data, "serve.log"), addr: addr, args: args, env: env, autoPool: autoPool}, nil
}

// readToken reads the bootstrap admin token, which must be owner-only and
// never logged.
func (s *server) readToken() error {
	p := filepath.Join(s.Data, "admin.token")
	tok, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	s.Token = strings.TrimSpace(string(tok))
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		return fmt.Errorf("admin.token mode = %v, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(s.log); bytes.Contains(b, []byte(s.Token)) {
		return fmt.Errorf("the admin token appears in the server log")
	}
	return nil
}

// remove deletes the server's data directory and gives back its pool.
func (s *server) remove() {
	os.RemoveAll(s.Data)
	if s.autoPool {
		releasePool(s.args[len(s.args)-1])
	}
}

// start runs `kiln serve` on the server's address and data directory and
// waits until it answers /healthz. Its output is appended to the log.
func (s *server) start(t *testing.T) {
	t.Helper()
	if err := s.boot(); err != nil {
		t.Fatal(err)
	}
}

// boot is start for callers without a test: it returns what went wrong.
func (s *server) boot() error {
	s.cmd = exec.Command(kilnBin, append([]string{"serve", "--data", s.Data, "--addr", s.addr, "--buildkitd", buildkitd, "--log-level", "debug"}, s.args...)...)
	s.cmd.Env = append(os.Environ(), s.env...)
	var err error
	s.exited, err = kilntest.Launch(s.cmd, s.log, s.URL)
	var exited *kilntest.ExitedError
	switch {
	case errors.As(err, &exited):
		s.cmd = nil
		if s.autoPool && s.poolRetries < 5 && exited.PoolInUse() {
			s.poolRetries++
			old := s.args[len(s.args)-1]
			s.args[len(s.args)-1] = nextBuilderSubnets(1 << (20 - netip.MustParsePrefix(old).Bits()))
			releasePool(old)
			return s.boot()
		}
		return fmt.Errorf("kiln serve exited at start:\n%s", exited.Log)
	case err != nil && !errors.Is(err, kilntest.ErrNoAnswer):
		s.cmd = nil
	}
	return err
}

// stop ends kiln serve gracefully (SIGTERM), or kills its process group
// if it does not stop within 30s. Stopping a stopped server does nothing.
func (s *server) stop(t *testing.T) {
	t.Helper()
	if err := s.close(); err != nil {
		t.Error(err)
	}
}

// close is stop for callers without a test.
func (s *server) close() error {
	if s.cmd == nil {
		return nil
	}
	defer func() { s.cmd = nil }()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(30 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		return fmt.Errorf("kiln serve did not stop within 30s of SIGTERM")
	}
}

// restart stops kiln serve and starts it again on the same address and
// data directory, as an operator's restart does.
func (s *server) restart(t *testing.T) {
	t.Helper()
	s.stop(t)
	s.start(t)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// result of one CLI run.
type result struct {
	Stdout, Stderr string
	Err            error
	Took           time.Duration
}

// kiln runs the CLI against s from dir with the admin token (override
// with "KILN_TOKEN=…" entries in env).
func (s *server) kiln(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token, "HOME="+t.TempDir(), "KILN_PROJECT_ID=", "DEPOT_PROJECT_ID=", "DEPOT_TOKEN=")
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	return result{Stdout: out.String(), Stderr: errb.String(), Err: err, Took: time.Since(start)}
}

// mustKiln is kiln that fails the test on a non-zero exit.
func (s *server) mustKiln(t *testing.T, dir string, args ...string) result {
	t.Helper()
	r := s.kiln(t, dir, nil, args...)
	if r.Err != nil {
		t.Fatalf("kiln %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Err, r.Stdout, tail(r.Stderr, 8000))
	}
	return r
}

func (s *server) createProject(t *testing.T, name string) string {
	t.Helper()
	r := s.mustKiln(t, t.TempDir(), "projects", "create", name, "--quiet")
	id := strings.TrimSpace(r.Stdout)
	if id == "" {
		t.Fatalf("projects create printed no id")
	}
	return id
}

// builders reads the operator endpoint listing builder processes.
type builderStatus struct {
	ProjectID string
	Platform  string
	State     string
	PID       int
	Socket    string
	Bridge    string // the bridge of its RUN steps' network
	Subnet    string
	Leases    []string
	StateDir  string
}

func (s *server) builders(t *testing.T) []builderStatus {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+"/debug/builders", nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out []builderStatus
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		t.Fatalf("decode /debug/builders: %v", err)
	}
	return out
}

// writeContext makes a build context with busybox and the given files.
func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// baseStages is the locally made busybox base every test Dockerfile starts from.
const baseStages = `FROM scratch AS busybox
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
`

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
