package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	bkclient "github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/session"
)

// kilnServer is one `kiln serve` on a loopback port with its own data
// directory, plus the kiln CLI pointed at it.
type kilnServer struct {
	URL   string
	Addr  string // host:port
	Data  string
	Token string // the bootstrap organization token
	bin   string
	home  string // HOME (and Docker config) of CLI runs
	proc  *proc
	http  *http.Client
}

// kilnServers counts the kiln serves started, for their builder subnets.
var kilnServers atomic.Int32

// addrPlaceholder in an extra argument of startKiln stands for the
// server's own host:port (chosen there), e.g. in --advertise-url.
const addrPlaceholder = "{addr}"

// startKiln runs `kiln serve` and waits for /healthz.
func startKiln(ctx context.Context, bin, buildkitd, data string, extra ...string) (*kilnServer, error) {
	return startKilnEnv(ctx, bin, buildkitd, data, nil, extra...)
}

// startKilnEnv is startKiln with variables added to kiln serve's
// environment (S3 keys).
func startKilnEnv(ctx context.Context, bin, buildkitd, data string, env []string, extra ...string) (*kilnServer, error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s := &kilnServer{URL: "http://" + addr, Addr: addr, Data: data, bin: bin, home: filepath.Join(data, "home"),
		http: &http.Client{Timeout: 30 * time.Second}}
	if err := os.MkdirAll(filepath.Join(s.home, ".docker"), 0o700); err != nil {
		return nil, err
	}
	// Builder subnets of its own (kiln serve refuses a pool another kiln
	// holds): a /20 of 10.62.0.0/16 per server, apart from the tests'.
	pool := fmt.Sprintf("10.62.%d.0/20", 16*(kilnServers.Add(1)%16))
	extra = slices.Clone(extra)
	for i := range extra {
		extra[i] = strings.ReplaceAll(extra[i], addrPlaceholder, addr)
	}
	args := append([]string{"serve", "--data", data, "--addr", addr, "--buildkitd", buildkitd, "--log-level", "info",
		"--builder-subnets", pool}, extra...)
	p, err := startProc("kiln serve", filepath.Join(data, "serve.log"), data, cleanEnv(env...), bin, args...)
	if err != nil {
		return nil, err
	}
	s.proc = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		if res, err := s.http.Get(s.URL + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if !p.alive() || time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("kiln serve did not come up (%v):\n%s", p.err, tailFile(filepath.Join(data, "serve.log"), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		s.stop()
		return nil, err
	}
	s.Token = strings.TrimSpace(string(tok))
	return s, nil
}

// stop ends kiln serve (it stops its builders) and cleans up what a crash
// might have left under its data directory.
func (s *kilnServer) stop() {
	if s.proc == nil {
		return
	}
	s.proc.stop(30 * time.Second)
	s.proc = nil
	killUnder(s.Data)
	_ = unmountUnder(s.Data)
}

func (s *kilnServer) env() []string {
	return cleanEnv("KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token, "HOME="+s.home, "DOCKER_CONFIG="+filepath.Join(s.home, ".docker"))
}

// cli runs the kiln CLI against s.
func (s *kilnServer) cli(ctx context.Context, timeout time.Duration, dir string, args ...string) (runResult, error) {
	return runCmd(ctx, timeout, dir, s.env(), s.bin, args...)
}

func (s *kilnServer) createProject(ctx context.Context, name string) (string, error) {
	r, err := s.cli(ctx, time.Minute, s.home, "projects", "create", name, "--quiet")
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(r.Output)
	if id == "" || strings.ContainsAny(id, " \n") {
		return "", fmt.Errorf("projects create printed %q, want an id", r.Output)
	}
	return id, nil
}

// build runs `kiln build` in project with the spec's context.
func (s *kilnServer) build(ctx context.Context, timeout time.Duration, project string, b buildSpec) (runResult, error) {
	args := []string{"build", "--project", project, "--progress", "plain"}
	for k, v := range sortedMap(b.BuildArgs) {
		args = append(args, "--build-arg", k+"="+v)
	}
	if b.Output != "" {
		// buildctl attaches no attestations; kiln build, like buildx,
		// adds min provenance to pushed images unless told not to.
		args = append(args, "-o", b.Output, "--provenance=false")
	}
	args = append(args, b.Context)
	return s.cli(ctx, timeout, b.Context, args...)
}

// builderStatus is an entry of GET /debug/builders.
type builderStatus struct {
	ProjectID string
	Platform  string
	State     string
	PID       int
	Addr      string
	StateDir  string
	LogPath   string
	Leases    []string
}

func (s *kilnServer) builders(ctx context.Context) ([]builderStatus, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", s.URL+"/debug/builders", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	res, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /debug/builders: %s", res.Status)
	}
	var out []builderStatus
	return out, json.NewDecoder(res.Body).Decode(&out)
}

// builder returns the amd64 builder of project as /debug/builders shows it.
func (s *kilnServer) builder(ctx context.Context, project string) (builderStatus, error) {
	bs, err := s.builders(ctx)
	if err != nil {
		return builderStatus{}, err
	}
	for _, b := range bs {
		if b.ProjectID == project && b.Platform == "linux/amd64" {
			return b, nil
		}
	}
	return builderStatus{}, fmt.Errorf("project %s has no builder in /debug/builders", project)
}

// waitBuilder polls /debug/builders until cond holds for project's builder.
func (s *kilnServer) waitBuilder(ctx context.Context, project string, timeout time.Duration, what string, cond func(builderStatus) bool) (builderStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := s.builder(ctx, project)
		if err == nil && cond(b) {
			return b, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return b, fmt.Errorf("builder of %s: not %s within %s (last: %+v, %v)", project, what, timeout, b, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// acquisition is one CreateBuild + GetBuildKitConnection until active.
type acquisition struct {
	remote *session.Remote
	Conn   engine.Connection
	Took   time.Duration // CreateBuild sent → active connection received
	Polls  int           // GetBuildKitConnection calls
}

// pollCounter counts the GetBuildKitConnection calls of an acquisition.
type pollCounter struct {
	*session.Remote
	n int
}

func (p *pollCounter) Acquire(ctx context.Context, b platform.Platform) (session.Lease, error) {
	p.n++
	return p.Remote.Acquire(ctx, b)
}

// acquire gets a builder for a new build in project as kiln's CLI does
// (session.Create, then session.Await: GetBuildKitConnection until it
// answers active, waiting the wait_ms each pending answer asks for, at
// least 50 ms). A poll > 0 waits that long between calls instead (to tell
// kiln's own latency from the polling interval it asks for).
func (s *kilnServer) acquire(ctx context.Context, project string, timeout, poll time.Duration) (acquisition, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var a acquisition
	start := time.Now()
	remote, err := session.Create(ctx, client.Config{APIURL: s.URL, Token: s.Token}, project,
		&cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD})
	if err != nil {
		return a, err
	}
	a.remote = remote
	counter := &pollCounter{Remote: remote}
	a.Conn, err = session.Await(ctx, counter, platform.AMD64, session.ConnectOptions{Wait: timeout, Poll: poll})
	a.Polls = counter.n
	if err != nil {
		s.finish(a)
		return a, fmt.Errorf("builder of %s not active: %w", project, err)
	}
	a.Took = time.Since(start)
	return a, nil
}

// finish ends a build the runner created through the API (success).
func (s *kilnServer) finish(a acquisition) {
	if a.remote != nil {
		a.remote.Finish(nil)
	}
}

// withBuilder dials project's builder through the API (a build is
// created and finished around it), for maintenance such as pruning.
func (s *kilnServer) withBuilder(ctx context.Context, project string, fn func(*bkclient.Client) error) error {
	a, err := s.acquire(ctx, project, 2*time.Minute, 0)
	if err != nil {
		return err
	}
	defer s.finish(a)
	c, err := engine.Dial(ctx, a.Conn)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}
