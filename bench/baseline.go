package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	bkclient "github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/pki"
)

// baseline is a plain buildkitd the runner starts itself, with kiln's
// builder configuration: the buildkitd.toml kiln wrote for its own builder
// (copied, with a bridge and subnet of its own for RUN steps) and the flags
// kiln passed (paths replaced by this daemon's). buildctl reaches it
// directly, TCP on loopback with mutual TLS, where kiln's CLI goes through
// kiln's builder gateway to its builder's unix socket.
type baseline struct {
	dir        string // everything of this daemon: state, certs, socket, log
	bin        string
	buildctl   string
	port       int
	serverName string
	conn       engine.Connection // for Go clients (prune, probes)
	args       []string
	proc       *proc
}

const baselineProject = "bench-baseline"

// newBaseline prepares (does not start) a daemon in dir. kilnArgs are the
// arguments kiln started its builder with and kilnConfig its buildkitd.toml.
func newBaseline(dir, buildkitd, buildctl string, kilnArgs []string, kilnConfig []byte) (*baseline, error) {
	// Short: buildkitd refuses unix socket paths over 104 bytes.
	for _, d := range []string{dir, filepath.Join(dir, "state"), filepath.Join(dir, "certs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	ca, err := pki.Open(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	b := &baseline{dir: dir, bin: buildkitd, buildctl: buildctl, serverName: "baseline.bench.kiln"}
	caPEM, err := ca.ProjectCA(baselineProject)
	if err != nil {
		return nil, err
	}
	srvCert, srvKey, err := ca.IssueServer(baselineProject, b.serverName, []net.IP{net.IPv4(127, 0, 0, 1)}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	cliCert, cliKey, err := ca.IssueClient(baselineProject, "bench", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"certs/ca.crt": caPEM, "certs/server.crt": srvCert, "certs/server.key": srvKey,
		"certs/client.crt": cliCert, "certs/client.key": cliKey, "buildkitd.toml": ownNetwork(kilnConfig),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	if b.port, err = freePort(); err != nil {
		return nil, err
	}
	b.conn = engine.Connection{Endpoint: b.addr(), ServerName: b.serverName,
		CertPEM: string(cliCert), KeyPEM: string(cliKey), CACertPEM: string(caPEM)}
	b.args = b.translate(kilnArgs)
	return b, nil
}

func (b *baseline) addr() string { return "tcp://127.0.0.1:" + strconv.Itoa(b.port) }

// baselines counts the baseline daemons, each of which gets its own bridge.
var baselines atomic.Int32

var (
	bridgeNameRe   = regexp.MustCompile(`(?m)^(\s*bridgeName\s*=\s*)".*"$`)
	bridgeSubnetRe = regexp.MustCompile(`(?m)^(\s*bridgeSubnet\s*=\s*)".*"$`)
)

// ownNetwork gives a copy of kiln's buildkitd.toml a bridge and subnet no
// kiln builder and no other baseline uses (RUN steps still get a network
// namespace each on a bridge, as on kiln's builders).
func ownNetwork(conf []byte) []byte {
	n := baselines.Add(1) % 250
	conf = bridgeNameRe.ReplaceAll(conf, []byte(fmt.Sprintf(`${1}"kbench%d"`, n)))
	return bridgeSubnetRe.ReplaceAll(conf, []byte(fmt.Sprintf(`${1}"10.61.%d.0/24"`, n)))
}

// translate maps kiln's builder flags to this daemon's paths; flags it does
// not know are passed on unchanged, so a flag kiln adds later reaches the
// baseline too.
func (b *baseline) translate(kilnArgs []string) []string {
	paths := map[string]string{
		"--config":           filepath.Join(b.dir, "buildkitd.toml"),
		"--root":             filepath.Join(b.dir, "state"),
		"--tlscert":          filepath.Join(b.dir, "certs", "server.crt"),
		"--tlskey":           filepath.Join(b.dir, "certs", "server.key"),
		"--tlscacert":        filepath.Join(b.dir, "certs", "ca.crt"),
		"--otel-socket-path": filepath.Join(b.dir, "otel.sock"),
	}
	var out []string
	for i := 0; i < len(kilnArgs); i++ {
		flag, val, hasEq := strings.Cut(kilnArgs[i], "=")
		if !hasEq {
			if i+1 < len(kilnArgs) && !strings.HasPrefix(kilnArgs[i+1], "--") {
				val = kilnArgs[i+1]
				i++
			} else {
				out = append(out, flag) // a boolean flag
				continue
			}
		}
		switch {
		case paths[flag] != "":
			val = paths[flag]
		case flag == "--addr" && strings.HasPrefix(val, "unix://"):
			val = "unix://" + filepath.Join(b.dir, "buildkitd.sock")
		case flag == "--addr" && strings.HasPrefix(val, "tcp://"):
			val = b.addr()
		}
		out = append(out, flag, val)
	}
	// kiln's builders serve only a unix socket (kiln's gateway terminates
	// TLS); the baseline serves buildctl directly, as buildkitd would
	// without kiln.
	return append(out, "--addr", b.addr(),
		"--tlscert", filepath.Join(b.dir, "certs", "server.crt"),
		"--tlskey", filepath.Join(b.dir, "certs", "server.key"),
		"--tlscacert", filepath.Join(b.dir, "certs", "ca.crt"))
}

// start launches buildkitd and waits until it answers over mTLS.
func (b *baseline) start(ctx context.Context) (time.Duration, error) {
	begin := time.Now()
	env := buildkitdEnv(filepath.Dir(b.bin))
	p, err := startProc("baseline buildkitd", filepath.Join(b.dir, "buildkitd.log"), b.dir, env, b.bin, b.args...)
	if err != nil {
		return 0, err
	}
	b.proc = p
	if err := b.waitReady(ctx, 60*time.Second); err != nil {
		b.stop()
		return 0, err
	}
	return time.Since(begin), nil
}

// waitReady polls ListWorkers every 10 ms (kiln's own probe polls every
// 50 ms, over the unix socket).
func (b *baseline) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if !b.proc.alive() {
			return fmt.Errorf("baseline buildkitd exited at start: %v; log %s:\n%s", b.proc.err, filepath.Join(b.dir, "buildkitd.log"), tailFile(filepath.Join(b.dir, "buildkitd.log"), 20))
		}
		if ok := b.ping(ctx); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("baseline buildkitd not ready within %s: %w", timeout, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (b *baseline) ping(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := engine.Dial(ctx, b.conn)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// stop ends the daemon and whatever it left (processes, mounts).
func (b *baseline) stop() {
	if b.proc == nil {
		return
	}
	b.proc.stop(10 * time.Second)
	b.proc = nil
	killUnder(b.dir)
	_ = unmountUnder(b.dir)
}

func (b *baseline) pid() int {
	if b.proc == nil {
		return 0
	}
	return b.proc.pid()
}

// buildctlArgs are the global flags that reach the daemon.
func (b *baseline) buildctlArgs() []string {
	return []string{"--addr", b.addr(), "--tlsservername", b.serverName,
		"--tlscacert", filepath.Join(b.dir, "certs", "ca.crt"),
		"--tlscert", filepath.Join(b.dir, "certs", "client.crt"),
		"--tlskey", filepath.Join(b.dir, "certs", "client.key")}
}

// buildSpec is one Dockerfile build, run by either side.
type buildSpec struct {
	Context   string            // directory with the Dockerfile
	BuildArgs map[string]string // --build-arg / --opt build-arg:
	Output    string            // "" (no export) or an -o/--output value
}

// build runs `buildctl build` with the Dockerfile frontend, as buildx would
// drive it: context and dockerfile locals from the same directory.
func (b *baseline) build(ctx context.Context, timeout time.Duration, s buildSpec) (runResult, error) {
	args := append(b.buildctlArgs(), "build", "--frontend", "dockerfile.v0",
		"--local", "context="+s.Context, "--local", "dockerfile="+s.Context, "--progress", "plain")
	for k, v := range sortedMap(s.BuildArgs) {
		args = append(args, "--opt", "build-arg:"+k+"="+v)
	}
	if s.Output != "" {
		args = append(args, "--output", s.Output)
	}
	return runCmd(ctx, timeout, s.Context, cleanEnv(), b.buildctl, args...)
}

// client dials the daemon like kiln's CLI dials a builder.
func (b *baseline) client(ctx context.Context) (*bkclient.Client, error) {
	return engine.Dial(ctx, b.conn)
}

// pruneContexts drops the daemon's build-context snapshots (source.local
// records), so the next build transfers its whole context again: a first
// run, with the daemon warm and the rest of the cache kept.
func pruneContexts(ctx context.Context, c *bkclient.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return c.Prune(ctx, nil, bkclient.PruneAll, bkclient.WithFilter([]string{"type==source.local"}))
}

// buildkitdEnv is the environment kiln gives its builders (see
// internal/builder: the binary's directory first on PATH, no NOTIFY_SOCKET
// or BUILDKITD_* variables).
func buildkitdEnv(binDir string) []string {
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "PATH="):
			if p := kv[len("PATH="):]; p != "" {
				path = p
			}
		case strings.HasPrefix(kv, "NOTIFY_SOCKET="), strings.HasPrefix(kv, "BUILDKITD_"):
		default:
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+binDir+string(os.PathListSeparator)+path)
}

// kilnBuilderArgs reads the arguments kiln started a builder with from the
// first line kiln writes to the builder's log:
// "kiln: <time> starting <buildkitd> <args…>".
func kilnBuilderArgs(logPath string) ([]string, error) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == "kiln:" && f[2] == "starting" {
			return f[4:], nil
		}
	}
	return nil, errors.New("no \"kiln: … starting …\" line in " + logPath)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), n)
}
