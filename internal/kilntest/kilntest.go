// Package kilntest runs a real kiln server for a test package: the kiln
// binary built from this tree, `kiln serve` on a loopback port with a
// temporary data directory, real buildkitd + runc builders. It is for
// tests only and imports no server package: the server is a separate
// process, driven as a user drives it.
//
// Every component is required. When one is missing (bin/buildkitd and
// bin/runc from hack/setup.sh, /bin/busybox for base images, root for
// rootful builders) the tests fail, unless a developer opts out locally
// with KILN_SKIP_MISSING=1.
package kilntest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/retry"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// Kiln is a kiln binary built from this tree, and the builder binaries
// it runs.
type Kiln struct {
	// Root is the module's root directory.
	Root string
	// Bin is the kiln binary, in a temporary directory Close removes.
	Bin string
	// Buildkitd is the buildkitd builders run (KILN_BUILDKITD, or
	// bin/buildkitd); runc is beside it.
	Buildkitd string
}

// MissingError lists the components a real server needs that are not
// there.
type MissingError struct{ Components []string }

func (e *MissingError) Error() string {
	return "missing components: " + strings.Join(e.Components, ", ") + "\nRun hack/setup.sh, or set KILN_SKIP_MISSING=1 to skip locally."
}

// Build checks the components and builds the kiln binary from the tree
// holding the working directory. A missing component is a *MissingError.
func Build() (*Kiln, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	k := &Kiln{Root: root, Buildkitd: os.Getenv("KILN_BUILDKITD")}
	if k.Buildkitd == "" {
		k.Buildkitd = filepath.Join(root, "bin", "buildkitd")
	}
	var missing []string
	if _, err := os.Stat(k.Buildkitd); err != nil {
		missing = append(missing, "buildkitd at "+k.Buildkitd+" (run hack/setup.sh)")
	}
	// Builders run the runc beside buildkitd (hack/setup.sh builds it with
	// seccomp); a distribution's older runc on PATH must not stand in.
	if runc := filepath.Join(filepath.Dir(k.Buildkitd), "runc"); !exists(runc) {
		missing = append(missing, "runc at "+runc+" (run hack/setup.sh)")
	}
	if !exists("/bin/busybox") {
		missing = append(missing, "/bin/busybox (apt-get install busybox-static)")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (builders run rootful buildkitd)")
	}
	if len(missing) > 0 {
		return nil, &MissingError{Components: missing}
	}
	tmp, err := os.MkdirTemp("", "kilntest-bin-")
	if err != nil {
		return nil, err
	}
	if k.Bin, err = BuildKiln(context.Background(), root, tmp); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return k, nil
}

// BuildKiln compiles the kiln binaries of the tree at root into dir —
// kiln and kiln-full, which kiln runs for serve and bake — and returns
// kiln's path.
func BuildKiln(ctx context.Context, root, dir string) (string, error) {
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "./cmd/kiln", "./cmd/kiln-full")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/kiln ./cmd/kiln-full: %v\n%s", err, out)
	}
	return filepath.Join(dir, "kiln"), nil
}

// Close removes the built binary.
func (k *Kiln) Close() error { return os.RemoveAll(filepath.Dir(k.Bin)) }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Server is one `kiln serve` process on a loopback port with its own data
// directory.
type Server struct {
	// URL is the API's (and the registry's) base URL: http://127.0.0.1:PORT.
	URL string
	// Token is the bootstrap admin (org) token.
	Token string
	// Data is the data directory, removed by Stop.
	Data string

	kiln    *Kiln
	cmd     *exec.Cmd
	exited  <-chan struct{} // closed when cmd has exited
	logPath string
	args    []string
}

// Start runs `kiln serve` with args added to its flags and waits until it
// answers. Unless args hold --builder-subnets, the builders' network is a
// random /20 of 10.128.0.0/9, chosen again when another kiln process on the
// machine holds it. Stop the server when done.
func (k *Kiln) Start(args ...string) (*Server, error) {
	// A short data path keeps builders' unix socket paths within limits.
	data, err := os.MkdirTemp("", "kilntest-")
	if err != nil {
		return nil, err
	}
	autoPool := !containsPrefix(args, "--builder-subnets")
	// Another kiln process may hold the subnets: then others are chosen.
	poolTaken := retry.Policy{Attempts: 5, Retryable: func(err error) bool { return autoPool && errors.Is(err, errPoolInUse) }}
	var s *Server
	err = retry.Do(context.Background(), poolTaken, func(context.Context) error {
		s = &Server{Data: data, kiln: k, logPath: filepath.Join(data, "serve.log"), args: args}
		if autoPool {
			s.args = append(append([]string{}, args...), "--builder-subnets", randomSubnets())
		}
		return s.start()
	})
	if err != nil {
		os.RemoveAll(data)
		return nil, err
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("kilntest: admin token: %w", err)
	}
	s.Token = strings.TrimSpace(string(tok))
	return s, nil
}

var errPoolInUse = errors.New("builder subnets in use")

// randomSubnets is a random /20 (16 builders) of 10.128.0.0/9.
func randomSubnets() string {
	i := rand.IntN(2048)
	return fmt.Sprintf("10.%d.%d.0/20", 128+i/16, (i%16)*16)
}

func containsPrefix(args []string, prefix string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, prefix) {
			return true
		}
	}
	return false
}

// start runs kiln serve on a free loopback port and waits for /healthz.
func (s *Server) start() error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	s.URL = "http://" + addr
	s.cmd = exec.Command(s.kiln.Bin, append([]string{"serve", "--data", s.Data, "--addr", addr, "--buildkitd", s.kiln.Buildkitd, "--log-level", "debug"}, s.args...)...)
	s.exited, err = Launch(s.cmd, s.logPath, s.URL)
	var exited *ExitedError
	switch {
	case errors.As(err, &exited):
		s.cmd = nil
		if exited.PoolInUse() {
			return errPoolInUse
		}
		return fmt.Errorf("kilntest: kiln serve exited at start:\n%s", tail(string(exited.Log), 4000))
	case errors.Is(err, ErrNoAnswer):
		s.Stop()
		return fmt.Errorf("kilntest: %w", err)
	case err != nil:
		s.cmd = nil
	}
	return err
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Stop ends the server gracefully (SIGTERM to its process), or kills its
// process group (its builders) if it has not stopped within 30 s, and
// removes its data directory. Stopping a stopped server does nothing.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	var err error
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		err = errors.New("kilntest: kiln serve did not stop within 30s of SIGTERM; killed")
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
	s.cmd = nil
	os.RemoveAll(s.Data)
	return err
}

// Log is the end of the server's log (its last n bytes).
func (s *Server) Log(n int) string {
	b, _ := os.ReadFile(s.logPath)
	return tail(string(b), n)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// CreateProject creates a project named name and returns its id.
func (s *Server) CreateProject(ctx context.Context, name string) (string, error) {
	cfg := client.Config{APIURL: s.URL, Token: s.Token}
	res, err := cfg.Projects().CreateProject(ctx, connect.NewRequest(&corev1.CreateProjectRequest{Name: name}))
	if err != nil {
		return "", fmt.Errorf("kilntest: create project %s: %w", name, err)
	}
	return res.Msg.GetProject().GetProjectId(), nil
}

// Main runs a test package's tests against one server, for TestMain:
// it builds kiln, starts the server, calls setup with it (to create
// projects, set the environment the tests read), runs the tests and stops
// the server. The server's log is printed when a test failed. It returns
// the exit code for os.Exit.
func Main(m *testing.M, setup func(*Server) error) int {
	k, err := Build()
	var missing *MissingError
	if errors.As(err, &missing) && testenv.SkipMissing() {
		fmt.Fprintf(os.Stderr, "kilntest: SKIPPING tests that need a kiln server (KILN_SKIP_MISSING=1); %v\n", err)
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kilntest: %v\n", err)
		return 1
	}
	defer k.Close()
	s, err := k.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kilntest: %v\n", err)
		return 1
	}
	code := func() int {
		defer func() {
			if err := s.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}()
		if setup != nil {
			if err := setup(s); err != nil {
				fmt.Fprintf(os.Stderr, "kilntest: setup: %v\n", err)
				return 1
			}
		}
		code := m.Run()
		if code != 0 {
			fmt.Fprintf(os.Stderr, "kiln serve log:\n%s\n", s.Log(12000))
		}
		return code
	}()
	return code
}

// BaseStages is the locally made busybox base a test Dockerfile starts
// from (`FROM busybox` after it), so no test reaches the internet. The
// context needs the busybox binary: see [WriteContext].
const BaseStages = `FROM scratch AS busybox
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
`

// WriteContext makes a build context in dir: the busybox binary (for
// [BaseStages]) and files, by slash path.
func WriteContext(dir string, files map[string]string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "busybox"), bb, 0o755); err != nil {
		return err
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}
