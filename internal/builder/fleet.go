package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/pki"
)

// Spec and Endpoint live in builder/spec so that the build domain can name
// them without depending on the fleet (BuildKit, gRPC, processes).
type (
	Spec     = spec.Spec
	Endpoint = spec.Endpoint
)

// Config configures a Fleet. Zero durations take the documented defaults.
type Config struct {
	Root          string // state root, e.g. DATA/builders; each builder gets Root/<project>/<arch>/
	BuildkitdPath string // path of the buildkitd binary; its directory is put first on buildkitd's PATH (for runc)
	CA            *pki.Authority
	IdleTTL       time.Duration // stop a builder with no leases after this long (state kept); 0 → 10m
	StartTimeout  time.Duration // 0 → 60s
	// StallTimeout: a builder in use (leases or open gateway connections)
	// that does not answer a liveness probe for this long is killed and
	// restarted, its builds failed ("stopped responding"); 0 → 60s.
	StallTimeout time.Duration
	Logger       *slog.Logger // nil → discard
	// OnExit is called (from a fleet goroutine) when a builder's process exits without having been asked to stop
	// (it crashed, or Recycle killed it), with the lease IDs (build IDs) that were using it and why, in a message
	// fit for their users (no server path). kiln fails those builds with it.
	// The builder is restarted after OnExit returns (or sooner, by an Ensure).
	OnExit func(projectID, platform string, leases []string, err error)
	// InsecureRegistries are registries ("host" or "host:port") builders
	// reach over plain HTTP (kiln serve --insecure-registry). Applied at
	// each start.
	InsecureRegistries []string
	// OwnRegistry is kiln's registry as builders reach it: over TLS, never
	// plain HTTP. Asked at each start (kiln's port may be known only once it
	// listens); nil or a zero answer: not configured.
	OwnRegistry func() OwnRegistry
	// Network places RUN steps in private networks (network.go).
	Network Network
	// PassEnv names variables of kiln's environment that builders get (an
	// operator's proxy settings). Nothing else of kiln's environment reaches
	// a builder: see buildkitdEnv.
	PassEnv []string
	// GitPrivateHosts lets builders' own git fetches reach loopback and
	// private addresses (kiln serve --git-private-hosts); by default their
	// fetch proxy applies the RUN steps' egress policy (fetchproxy.go).
	GitPrivateHosts bool
	// MemoryLimit caps each builder's memory, buildkitd and its RUN steps
	// together, in bytes (its cgroup's limit: the kernel OOM-kills a step
	// that outgrows it); 0: no limit. NewFleet fails if the machine has no
	// cgroups to enforce it with.
	MemoryLimit int64
	// OnUsage is told, about every second, what each builder held by builds
	// used (resources.go). It is called from a fleet goroutine and must not
	// block. nil: no samples.
	OnUsage func(Usage)
}

// OwnRegistry is how builders reach kiln's own registry.
type OwnRegistry struct {
	Host    string   // host[:port] as in image references, e.g. "127.0.0.1:7420"
	CAFiles []string // PEM files of the CAs its TLS certificate may chain to (besides the system's)
}

// State is a builder's lifecycle state as reported by Status.
type State string

const (
	StateStarting State = "starting" // buildkitd launched, not answering yet
	StateReady    State = "ready"    // answering; Endpoint usable
	StateStopped  State = "stopped"  // not running (or being stopped: PID still set), cache kept
	StateCrashed  State = "crashed"  // exited unasked or failed to start; Status.Err says why
)

// Status describes one builder.
type Status struct {
	ProjectID string
	Platform  string
	State     State
	PID       int    // buildkitd's pid; 0 when no process
	Socket    string // buildkitd's unix socket
	Bridge    string // the bridge of its RUN steps' network, "" before the first start
	Subnet    string // that network's subnet
	Leases    []string
	Conns     int    // open gateway connections to it
	StateDir  string // the builder's directory, Root/<project>/<arch>; buildkitd's --root is StateDir/state
	LogPath   string // buildkitd's log, StateDir/buildkitd.log
	Err       string // why the last start failed or the process exited, if it did
}

const (
	defaultIdleTTL      = 10 * time.Minute
	defaultStartTimeout = 60 * time.Second
	defaultStallTimeout = 60 * time.Second
	// stopGrace is how long a builder gets to exit after SIGTERM before its
	// whole tree is killed.
	stopGrace = 10 * time.Second
	// startRetryBackoff: after a failed start, Ensure reports that failure
	// for this long instead of starting again, so a broken builder is not
	// relaunched in a tight loop by polling callers.
	startRetryBackoff = 5 * time.Second
	// maxSocketPath is the longest unix socket path buildkitd accepts
	// (containerd's sys.CreateUnixSocket checks for the BSD limit, 104,
	// which is below Linux's 108).
	maxSocketPath = 104
)

// Fleet runs the builders. All methods are safe for concurrent use.
//
// Locking: mu guards builders, closed, resetting and every mutable field of
// every builder and run (the fields marked "guarded by Fleet.mu"). Nothing
// slow happens under mu: launching, probing, signalling, waiting, killing
// and unmounting are done by per-builder goroutines (runBuilder) or by the
// caller (stops) with mu released. A builder has at most one run at a time
// (b.run != nil from launch until its process tree is cleaned up), which is
// what keeps two buildkitd processes from sharing one state directory.
type Fleet struct {
	cfg  Config
	root string // cfg.Root made absolute with symlinks resolved, to compare with /proc links
	log  *slog.Logger

	mu        sync.Mutex
	builders  map[key]*builder
	names     map[string]*builder // server name → builder, for the gateway
	resetting map[string]int      // project → Resets in progress
	closed    bool

	// egressMu serializes writes of the egress rules (network.go).
	egressMu sync.Mutex
	// releasePool gives up the claim on Network.Pool (Close).
	releasePool func()
	// cg is the machine's cgroup setup (version cgroupNone: builders run
	// without cgroups); cgBase the cgroup of this fleet's builders.
	// Set by NewFleet, then read-only.
	cg     cgroupSystem
	cgBase string

	quit chan struct{}  // closed by Close; stops the reaper
	wg   sync.WaitGroup // runBuilder goroutines, the reaper, background stops
}

type key struct{ project, platform string }

// builder is one (project, platform). The first group of fields never
// changes after creation.
type builder struct {
	projectID  string
	platform   string // normalized
	arch       string // directory name: "amd64", "arm64", "arm-v7"
	dir        string // Root/<project>/<arch>
	sockDir    string // dir, or a short directory when dir is too long for sockets
	serverName string

	// guarded by Fleet.mu
	spec     Spec   // the latest Ensure's; applied at the next start (its egress at once)
	caPEM    string // the project CA, for Endpoint
	state    State
	net      int // index of its build network in Network.Pool; -1 until the first start
	run      *run
	Use                // its leases and open gateway connections; idle time counts from their end
	lastErr  error     // why the last start failed or the run ended; said to clients, so it names no server path
	retryAt  time.Time // after a failed start, Ensure returns lastErr until then
	answered time.Time // when the stall watch last heard from it (or had no reason to ask: not in use)
	probing  bool      // a liveness probe is in flight
	wedged   error     // set when its run reported running out of disk; the run is recycled once no solve is in progress
	wedgedAt time.Time
	restart  bool          // start again once the current run is gone (Ensure during a stop)
	changed  chan struct{} // closed and replaced at every state change; Acquire waits on it
	// sampleLeases are the leases held at any time since the sampler's
	// last tick, which resets it to leases.
	sampleLeases map[string]bool
}

// run is one buildkitd process of a builder, from launch to cleanup.
type run struct {
	stop chan struct{} // closed when a stop is requested
	done chan struct{} // closed once the process exited and its tree was cleaned up

	// guarded by Fleet.mu
	stopping bool        // stop has been closed
	proc     *os.Process // nil until launched
	// cause, set by Recycle, is why kiln killed this run: the error its
	// builds fail with instead of "crashed". keepLeases: they are not
	// failed but carry over to the restart (no solve was in progress).
	cause      error
	keepLeases bool
	// cgroup is the run's cgroup ("" without); usage, usageAt the last
	// reading of it (resources.go: readRun), starting from zero at launch.
	cgroup  string
	usage   *cgroupUsage
	usageAt time.Time
	oom     *oomWatch // cgroup v1's OOM notifications; nil without (v2, or no cgroup)
}

func (b *builder) stateDir() string { return filepath.Join(b.dir, "state") }
func (b *builder) tmpDir() string   { return filepath.Join(b.dir, "tmp") }
func (b *builder) logPath() string  { return filepath.Join(b.dir, "buildkitd.log") }
func (b *builder) sock() string     { return filepath.Join(b.sockDir, "buildkitd.sock") }
func (b *builder) otelSock() string { return filepath.Join(b.sockDir, "otel-grpc.sock") }

// endpoint is guarded by Fleet.mu.
func (b *builder) endpoint() Endpoint {
	return Endpoint{ServerName: b.serverName, CACertPEM: b.caPEM, Socket: b.sock()}
}

// broadcastLocked wakes everything waiting on a change of b.
func (b *builder) broadcastLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// NewFleet checks cfg and returns a Fleet with no builder running. Processes
// and mounts left under Root by a previous kiln process (RUN containers
// survive their buildkitd) are cleaned up first: Root belongs to one Fleet.
func NewFleet(cfg Config) (*Fleet, error) {
	if cfg.Root == "" || cfg.BuildkitdPath == "" || cfg.CA == nil {
		return nil, fmt.Errorf("builder: Root, BuildkitdPath and CA are required: %w", errdefs.ErrInvalid)
	}
	bin, err := filepath.Abs(cfg.BuildkitdPath)
	if err != nil {
		return nil, fmt.Errorf("builder: %w", err)
	}
	st, err := os.Stat(bin)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("builder: buildkitd binary %s is not an executable file: %w", bin, errdefs.ErrInvalid)
	}
	cfg.BuildkitdPath = bin
	if cfg.Network, err = cfg.Network.withDefaults(); err != nil {
		return nil, fmt.Errorf("builder: %w", err)
	}
	if cfg.OwnRegistry == nil {
		cfg.OwnRegistry = func() OwnRegistry { return OwnRegistry{} }
	}
	for _, h := range cfg.InsecureRegistries {
		if err := checkRegistryHost(h); err != nil {
			return nil, fmt.Errorf("builder: insecure registry %q: %w", h, err)
		}
	}
	if cfg.MemoryLimit < 0 {
		return nil, fmt.Errorf("builder: negative memory limit: %w", errdefs.ErrInvalid)
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = defaultIdleTTL
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = defaultStallTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return nil, fmt.Errorf("builder: %w", err)
	}
	root, err := filepath.Abs(cfg.Root)
	if err == nil {
		root, err = filepath.EvalSymlinks(root)
	}
	if err != nil {
		return nil, fmt.Errorf("builder: %w", err)
	}
	if n, err := cleanupTree(root, 0); n > 0 || err != nil {
		log.Warn("cleaned up leftovers of a previous run", "root", root, "killed", n, "err", err)
	}
	release, err := cfg.Network.claim()
	if err != nil {
		return nil, fmt.Errorf("builder: %w", err)
	}
	if stale := cfg.Network.removeStaleBridges(); len(stale) > 0 {
		log.Warn("removed build networks a previous run left (it was killed)", "bridges", stale)
	}
	f := &Fleet{
		releasePool: release,
		cfg:         cfg,
		root:        root,
		log:         log,
		builders:    map[key]*builder{},
		names:       map[string]*builder{},
		resetting:   map[string]int{},
		quit:        make(chan struct{}),
	}
	if err := f.setupCgroups(); err != nil {
		release()
		return nil, fmt.Errorf("builder: %w", err)
	}
	f.keepReserve() // reserve.go
	f.wg.Add(3)
	go f.reap()
	go f.watch()
	go f.sample()
	return f, nil
}

// Ensure starts the builder for spec if it is not running (in the background)
// and reports whether it is ready now. It never blocks on startup; Endpoint is
// filled in either way. Concurrent calls for one (project, platform) share one
// builder. A changed GC policy in spec is applied at the next start. Ensure
// counts as use: it restarts the idle clock of a builder without leases.
//
// After a failed start, Ensure returns that error (wrapping
// errdefs.ErrUnavailable; the server log has the details) for a few
// seconds, then tries again.
func (f *Fleet) Ensure(spec Spec) (ep Endpoint, ready bool, err error) {
	ep, ready, _, err = f.ensure(spec)
	return ep, ready, err
}

// Acquire is Ensure that waits until the builder is ready, its start fails,
// or ctx is done.
func (f *Fleet) Acquire(ctx context.Context, spec Spec) (Endpoint, error) {
	for {
		ep, ready, changed, err := f.ensure(spec)
		if err != nil || ready {
			return ep, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Endpoint{}, fmt.Errorf("builder %s/%s not ready: %w: %w", spec.ProjectID, spec.Platform, errdefs.ErrUnavailable, context.Cause(ctx))
		}
	}
}

// ensure is Ensure that also returns a channel closed at the builder's next
// state change.
func (f *Fleet) ensure(spec Spec) (Endpoint, bool, <-chan struct{}, error) {
	platform, arch, ok := parsePlatform(spec.Platform)
	if !ok {
		return Endpoint{}, false, nil, fmt.Errorf("builder: platform %q: %w", spec.Platform, errdefs.ErrInvalid)
	}
	spec.Platform = platform
	if spec.KeepBytes < 0 || spec.KeepDuration < 0 {
		return Endpoint{}, false, nil, fmt.Errorf("builder: negative GC setting: %w", errdefs.ErrInvalid)
	}
	if spec.KeepBytes == 0 {
		spec.KeepBytes = DefaultKeepBytes
	}
	if spec.KeepDuration == 0 {
		spec.KeepDuration = DefaultKeepDuration
	}
	// Outside mu: the first call for a project creates its CA on disk. It
	// also validates the project id (errdefs.ErrInvalid).
	caPEM, err := f.cfg.CA.ProjectCA(spec.ProjectID)
	if err != nil {
		return Endpoint{}, false, nil, fmt.Errorf("builder: %w", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Endpoint{}, false, nil, fmt.Errorf("builder: fleet is closed: %w", errdefs.ErrUnavailable)
	}
	b := f.builderLocked(spec.ProjectID, platform, arch)
	egressChanged := b.net >= 0 && !slices.Equal(b.spec.EgressAllow, spec.EgressAllow)
	b.spec = spec
	b.caPEM = string(caPEM)
	if egressChanged {
		// Applied to the running builder at once, after mu is released.
		defer func() { go f.applyEgressLogged() }()
	}
	b.Touch(time.Now())
	switch {
	case b.state == StateReady && b.wedged != nil:
		// Out of disk: new builds wait for the recycle (watch).
		return b.endpoint(), false, b.changed, nil
	case b.state == StateReady:
		return b.endpoint(), true, b.changed, nil
	case b.state == StateStarting:
		return b.endpoint(), false, b.changed, nil
	case b.run != nil || f.resetting[b.projectID] > 0:
		// Being stopped or reset: start again when that is done.
		b.restart = true
		return b.endpoint(), false, b.changed, nil
	case b.state == StateCrashed && time.Now().Before(b.retryAt):
		return b.endpoint(), false, b.changed, b.lastErr
	}
	f.startLocked(b)
	return b.endpoint(), false, b.changed, nil
}

// builderLocked returns the builder for (project, platform), creating its
// record (not its process) on first use.
func (f *Fleet) builderLocked(projectID, platform, arch string) *builder {
	k := key{projectID, platform}
	if b, ok := f.builders[k]; ok {
		return b
	}
	dir := filepath.Join(f.root, projectID, arch)
	b := &builder{
		projectID:  projectID,
		platform:   platform,
		arch:       arch,
		dir:        dir,
		sockDir:    socketDir(dir),
		serverName: projectID + "-" + arch + gateway.ServerNameSuffix,
		state:      StateStopped,
		net:        -1,
		changed:    make(chan struct{}),
	}
	f.builders[k] = b
	f.names[b.serverName] = b
	return b
}

// Lookup returns the project of the builder named serverName
// (Endpoint.ServerName) and its socket: what the gateway splices a
// connection to.
func (f *Fleet) Lookup(serverName string) (projectID string, backend engine.Connection, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.names[serverName]
	if !ok {
		return "", engine.Connection{}, false
	}
	return b.projectID, engine.Connection{Endpoint: "unix://" + b.sock()}, true
}

// PlatformOf returns the platform ("linux/arm64") of the builder named
// serverName, or "" for a name no builder has.
func (f *Fleet) PlatformOf(serverName string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.names[serverName]; ok {
		return b.platform
	}
	return ""
}

// Lease marks the builder in use by leaseID (a build id): it is not stopped
// for idleness while it has leases, and OnExit reports them if it crashes.
// Leasing a builder that is not running is allowed (and records it).
func (f *Fleet) Lease(projectID, platform, leaseID string) {
	platform, arch, ok := parsePlatform(platform)
	if !ok || !pki.ValidProjectID(projectID) {
		f.log.Warn("lease for an invalid builder ignored", "project", projectID, "platform", platform, "lease", leaseID)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.builderLocked(projectID, platform, arch)
	b.Lease(leaseID, time.Now())
	if b.sampleLeases == nil {
		b.sampleLeases = map[string]bool{}
	}
	b.sampleLeases[leaseID] = true
}

// Leased reports whether leaseID holds the builder of projectID for
// platform and that builder has not stopped: a lease survives only on a
// builder that still runs (or is starting again after a crash).
func (f *Fleet) Leased(projectID, platform, leaseID string) bool {
	platform, _, ok := parsePlatform(platform)
	if !ok {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.builders[key{projectID, platform}]
	return ok && b.state != StateStopped && b.Holds(leaseID)
}

// Hold marks the builder named serverName in use by an open gateway
// connection: like a lease, it keeps the builder from being stopped for
// idleness (a client mid-solve may hold no lease any more, e.g. when the
// control plane lost track of it), and idle time counts from the release
// of the last one. An unknown name holds nothing.
func (f *Fleet) Hold(serverName string) (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.names[serverName]
	if !ok {
		return func() {}
	}
	return b.Hold(&f.mu)
}

// Release ends a lease. Idle time counts from the release of the last one.
// Releasing an unknown lease is a no-op.
func (f *Fleet) Release(projectID, platform, leaseID string) {
	platform, _, _ = parsePlatform(platform)
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.builders[key{projectID, platform}]
	if !ok {
		return
	}
	b.Release(leaseID, time.Now())
}

// Reset stops every builder of the project (builds on them fail, and OnExit
// is not called: the stop was asked for) and deletes Root/<project>, emptying
// its caches. Builders requested during the reset start when it is done.
func (f *Fleet) Reset(ctx context.Context, projectID string) error {
	if !pki.ValidProjectID(projectID) {
		return fmt.Errorf("builder: project id %q: %w", projectID, errdefs.ErrInvalid)
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return fmt.Errorf("builder: fleet is closed: %w", errdefs.ErrUnavailable)
	}
	f.resetting[projectID]++
	var runs []*run
	var sockDirs []string
	for _, b := range f.builders {
		if b.projectID != projectID {
			continue
		}
		if r := f.requestStopLocked(b); r != nil {
			runs = append(runs, r)
		}
		if b.sockDir != b.dir {
			sockDirs = append(sockDirs, b.sockDir)
		}
	}
	f.mu.Unlock()

	f.stopAll(ctx, runs)
	dir := filepath.Join(f.root, projectID)
	// Also catches processes and mounts of builders this Fleet never ran
	// (a previous kiln process, another platform).
	_, cerr := cleanupTree(dir, 0)
	rerr := os.RemoveAll(dir)
	for _, d := range sockDirs {
		_ = os.RemoveAll(d)
	}

	f.mu.Lock()
	f.resetting[projectID]--
	if f.resetting[projectID] == 0 {
		delete(f.resetting, projectID)
	}
	for _, b := range f.builders {
		if b.projectID != projectID || b.run != nil {
			continue
		}
		b.state, b.lastErr, b.retryAt = StateStopped, nil, time.Time{}
		if b.restart && !f.closed && f.resetting[projectID] == 0 {
			f.startLocked(b)
		}
		b.broadcastLocked()
	}
	f.mu.Unlock()

	if err := errors.Join(cerr, rerr); err != nil {
		return fmt.Errorf("builder: reset %s: %w", projectID, err)
	}
	f.log.Info("project builders reset", "project", projectID)
	return nil
}

// Status lists all builders the fleet knows, by project then platform.
func (f *Fleet) Status() []Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Status, 0, len(f.builders))
	for _, b := range f.builders {
		s := Status{
			ProjectID: b.projectID,
			Platform:  b.platform,
			State:     b.state,
			Socket:    b.sock(),
			StateDir:  b.dir,
			LogPath:   b.logPath(),
			Conns:     b.Conns(),
			Leases:    b.LeaseIDs(),
		}
		if b.run != nil && b.run.proc != nil {
			s.PID = b.run.proc.Pid
		}
		if b.net >= 0 {
			s.Bridge, s.Subnet = f.cfg.Network.bridge(b.net), f.cfg.Network.subnet(b.net).String()
		}
		if b.lastErr != nil {
			s.Err = b.lastErr.Error()
		}
		out = append(out, s)
	}
	SortStatus(out)
	return out
}

// SortStatus orders builders' statuses by project, then platform: how
// every driver's Status lists them.
func SortStatus(out []Status) {
	sort.Slice(out, func(i, j int) bool {
		if out[i].ProjectID != out[j].ProjectID {
			return out[i].ProjectID < out[j].ProjectID
		}
		return out[i].Platform < out[j].Platform
	})
}

// Close stops all builders (SIGTERM, then the whole process tree is killed
// after a grace period or when ctx is done) and waits for their cleanup.
// Caches stay on disk. After Close, Ensure fails with ErrUnavailable.
func (f *Fleet) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	var runs []*run
	var sockDirs []string
	for _, b := range f.builders {
		if r := f.requestStopLocked(b); r != nil {
			runs = append(runs, r)
		}
		if b.sockDir != b.dir {
			sockDirs = append(sockDirs, b.sockDir)
		}
	}
	f.mu.Unlock()
	close(f.quit)

	f.stopAll(ctx, runs)
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("builder: close: %w", context.Cause(ctx))
	}
	for _, d := range sockDirs {
		_ = os.RemoveAll(d)
	}
	f.removeCgroups()
	f.removeNetworks()
	f.releasePool()
	return nil
}

// reap stops builders that have been idle (no leases, no open gateway
// connections) for IdleTTL.
func (f *Fleet) reap() {
	defer f.wg.Done()
	interval := min(max(f.cfg.IdleTTL/4, 50*time.Millisecond), 30*time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-f.quit:
			return
		case <-t.C:
		}
		now := time.Now()
		var runs []*run
		f.mu.Lock()
		for _, b := range f.builders {
			if b.state != StateReady || b.InUse() || b.IdleFor(now) < f.cfg.IdleTTL {
				continue
			}
			if r := f.requestStopLocked(b); r != nil {
				f.log.Info("stopping idle builder", "project", b.projectID, "platform", b.platform, "idle", b.IdleFor(now).Round(time.Second))
				runs = append(runs, r)
			}
		}
		f.mu.Unlock()
		if len(runs) > 0 {
			// Not inline: a slow stop must not delay the next scan.
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.stopAll(context.Background(), runs)
			}()
		}
	}
}

var platformRe = regexp.MustCompile(`^linux/([a-z0-9]+)(?:/(v[0-9]+))?$`)

// parsePlatform normalizes "linux/<arch>[/<variant>]" and returns the
// directory name for it. arm64's default variant v8 is dropped.
func parsePlatform(p string) (platform, arch string, ok bool) {
	m := platformRe.FindStringSubmatch(p)
	if m == nil {
		return p, "", false
	}
	arch, variant := m[1], m[2]
	if arch == "arm64" && variant == "v8" {
		variant = ""
	}
	platform = "linux/" + arch
	if variant != "" {
		platform += "/" + variant
		arch += "-" + variant
	}
	return platform, arch, true
}

// socketDir is where a builder's unix sockets go: its own directory when the
// socket paths fit, otherwise /run/kiln/<hash of dir> (or the same under
// os.TempDir when /run/kiln cannot be created).
func socketDir(dir string) string {
	const longest = "/otel-grpc.sock" // the longer of the two socket names
	if len(dir)+len(longest) <= maxSocketPath {
		return dir
	}
	sum := sha256.Sum256([]byte(dir))
	name := hex.EncodeToString(sum[:8])
	base := "/run/kiln"
	if err := os.MkdirAll(base, 0o700); err != nil {
		base = filepath.Join(os.TempDir(), "kiln")
	}
	return filepath.Join(base, name)
}
