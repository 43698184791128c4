package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/buildkit/client"
	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// startLocked begins a run of b in the background. Caller holds f.mu and has
// checked that b has no run.
func (f *Fleet) startLocked(b *builder) {
	b.restart = false
	b.wedged = nil
	if err := f.netLocked(b); err != nil {
		b.state = StateCrashed
		b.lastErr = fmt.Errorf("the builder for project %s (%s): %w", b.projectID, b.platform, err)
		b.retryAt = time.Now().Add(startRetryBackoff)
		b.broadcastLocked()
		return
	}
	b.state = StateStarting
	r := &run{stop: make(chan struct{}), done: make(chan struct{})}
	b.run = r
	f.wg.Add(1)
	go f.runBuilder(b, r, b.spec, b.net)
	b.broadcastLocked()
}

// requestStopLocked marks b's run as asked to stop and returns it, or nil if b
// has no run. The signalling and waiting is stopAll's, without f.mu.
func (f *Fleet) requestStopLocked(b *builder) *run {
	r := b.run
	if r == nil {
		return nil
	}
	if !r.stopping {
		r.stopping = true
		close(r.stop)
		b.state = StateStopped
		b.broadcastLocked()
	}
	return r
}

// stopAll stops runs concurrently: SIGTERM to buildkitd, then, after
// stopGrace or when ctx is done, SIGKILL to its process group. runBuilder
// sees the exit and cleans up the rest of the tree; stopAll returns when it
// has (or, should that hang, a while after the kill).
func (f *Fleet) stopAll(ctx context.Context, runs []*run) {
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.mu.Lock()
			proc := r.proc // nil: still launching; runBuilder sees r.stop and kills it
			f.mu.Unlock()
			if proc != nil {
				_ = proc.Signal(unix.SIGTERM)
			}
			grace := time.NewTimer(stopGrace)
			defer grace.Stop()
			select {
			case <-r.done:
				return
			case <-grace.C:
			case <-ctx.Done():
			}
			f.mu.Lock()
			proc = r.proc
			f.mu.Unlock()
			if proc != nil {
				_ = unix.Kill(-proc.Pid, unix.SIGKILL)
				_ = proc.Kill()
			}
			select {
			case <-r.done:
			case <-time.After(15 * time.Second):
				f.log.Error("builder did not finish cleaning up after kill")
			}
		}()
	}
	wg.Wait()
}

// runBuilder is the life of one run: launch buildkitd, wait until it answers,
// wait for it to exit, clean up its tree, then record the outcome.
//
// Errors recorded for clients (lastErr, OnExit's) name no server path and
// quote nothing of buildkitd's log, which is full of them; the server log
// gets the details: the log file's path and its last line.
func (f *Fleet) runBuilder(b *builder, r *run, spec Spec, netIndex int) {
	defer f.wg.Done()
	log := f.log.With("project", b.projectID, "platform", b.platform)

	fetch, err := startFetchProxy(func() []netip.Prefix {
		f.mu.Lock()
		defer f.mu.Unlock()
		return b.spec.EgressAllow
	}, f.cfg.GitPrivateHosts, log)
	if err != nil {
		log.Warn("builder failed to start", "err", err)
		f.finishRun(b, r, f.startFailed(b, "kiln could not launch it"), true, time.Now())
		return
	}
	defer fetch.Close() // after the cleanup below: nothing of the run fetches any more
	cmd, logDone, egress, cgroup, err := f.launch(b, spec, netIndex, fetch.URL(), func() { f.diskFull(b, r) })
	if err != nil {
		log.Warn("builder failed to start", "err", err)
		f.finishRun(b, r, f.startFailed(b, "kiln could not launch it"), true, time.Now())
		return
	}
	pgid := cmd.Process.Pid // Setpgid: buildkitd leads its own group
	var oom *oomWatch
	if cgroup != "" {
		if oom, err = f.cg.watchOOM(cgroup); err != nil {
			log.Warn("builder OOM notifications unavailable; OOM kills of RUN steps may go unrecorded", "cgroup", cgroup, "err", err)
		}
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	f.mu.Lock()
	r.proc = cmd.Process
	// A new cgroup's counters start at zero: the first sample covers the
	// time since launch.
	r.cgroup, r.usage, r.usageAt, r.oom = cgroup, &cgroupUsage{}, time.Now(), oom
	b.broadcastLocked()
	f.mu.Unlock()
	log.Info("buildkitd started", "pid", pgid, "socket", b.sock(), "bridge", f.cfg.Network.bridge(netIndex), "subnet", f.cfg.Network.subnet(netIndex))

	start := time.Now()
	if err, gone := f.waitReady(b, r, exited, logDone, egress); err != nil {
		_ = cmd.Process.Kill()
		if !gone {
			<-exited
		}
		f.cleanup(b, r, pgid)
		f.finishRun(b, r, err, true, time.Now())
		return
	}
	f.mu.Lock()
	if !r.stopping {
		b.state = StateReady
		b.lastErr = nil
		b.answered = time.Now()
		b.Touch(time.Now())
		b.broadcastLocked()
	}
	f.mu.Unlock()
	log.Info("builder ready", "took", time.Since(start).Round(time.Millisecond))

	werr := <-exited
	diedAt := time.Now()
	// From now on Ensure answers "not ready" (and asks for a restart), so
	// no new build is handed the dead endpoint while the tree is cleaned up.
	f.mu.Lock()
	if !r.stopping {
		b.state = StateCrashed
		b.broadcastLocked()
	}
	cause := r.cause
	f.mu.Unlock()
	f.cleanup(b, r, pgid)
	// The cleanup killed whatever held the log pipe; let the copy catch up
	// so the server log can quote buildkitd's last line.
	waitLog(logDone)
	if werr == nil {
		werr = errors.New("exit status 0")
	}
	if cause == nil {
		cause = errdefs.Wrapf(errdefs.ErrUnavailable, nil, "the builder for project %s (%s) crashed during the build (%s); retry the build",
			b.projectID, b.platform, exitReason(werr))
	}
	log.Warn("buildkitd exited", "err", werr, "cause", cause, "last_log_line", lastLine(b.logPath()), "log", b.logPath())
	f.finishRun(b, r, cause, false, diedAt)
}

// exitReason says how a process ended, in the words of the crash message:
// "signal 9", "exit status 2".
func exitReason(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				return fmt.Sprintf("signal %d", ws.Signal())
			case ws.Exited():
				return fmt.Sprintf("exit status %d", ws.ExitStatus())
			}
		}
	}
	return err.Error()
}

// startFailed is the error a client gets for a builder that did not come
// up; why is in the server log, next to the log file's path.
func (f *Fleet) startFailed(b *builder, why string) error {
	return errdefs.Wrapf(errdefs.ErrUnavailable, nil, "the builder for project %s (%s) failed to start (%s; the server log says more); kiln tries again in a few seconds",
		b.projectID, b.platform, why)
}

// cleanup kills what is left of a run's process tree, detaches its mounts
// and removes its cgroup (after reporting an OOM kill the sampler has not
// seen yet). Everything in the cgroup is the builder's: it is killed
// first, then what cleanupTree finds by path (RUN steps of a build that
// named a cgroup parent of its own).
func (f *Fleet) cleanup(b *builder, r *run, pgid int) {
	var n int
	if r.cgroup != "" {
		f.lastUsage(b, r)
		if pgid > 0 {
			_ = unix.Kill(-pgid, unix.SIGKILL)
		}
		n = f.killCgroup(r.cgroup)
	}
	m, err := cleanupTree(b.dir, pgid)
	if r.cgroup != "" {
		r.oom.close()
		f.removeCgroup(b, r.cgroup)
	}
	if n+m > 0 || err != nil {
		f.log.Info("builder process tree cleaned up", "project", b.projectID, "platform", b.platform, "stragglers_killed", n+m, "err", err)
	}
}

// waitLog gives the log copy a moment to drain after buildkitd exited.
func waitLog(logDone <-chan struct{}) {
	select {
	case <-logDone:
	case <-time.After(time.Second):
	}
}

// finishRun records the end of a run. duringStart says it never became
// ready. A run that ends unasked after having been ready is a crash (or a
// Recycle): its leases go to OnExit with err and the builder is started
// again. diedAt is when the process exited: leases taken after it (a build
// handed the builder while it was being cleaned up) are not the lost ones;
// they carry over to the restart, as all do when a Recycle said so.
func (f *Fleet) finishRun(b *builder, r *run, err error, duringStart bool, diedAt time.Time) {
	f.mu.Lock()
	b.run = nil
	close(r.done)
	crashed := !r.stopping && !duringStart
	var leases []string
	switch {
	case r.stopping:
		b.state = StateStopped
	case duringStart:
		b.state = StateCrashed
		b.lastErr = err
		b.retryAt = time.Now().Add(startRetryBackoff)
		f.log.Warn("builder failed to start", "project", b.projectID, "platform", b.platform, "err", err)
	default:
		b.state = StateCrashed
		b.lastErr = err
		if !r.keepLeases {
			leases = b.TakeLeases(diedAt, time.Now())
		} else {
			b.Touch(time.Now())
		}
		f.log.Warn("builder crashed", "project", b.projectID, "platform", b.platform, "leases", leases, "err", err)
	}
	canStart := !f.closed && f.resetting[b.projectID] == 0
	if canStart && r.stopping && b.restart {
		f.startLocked(b)
	}
	// A builder that stopped for good gives its build network back (at
	// Close, removeNetworks removes them all at once).
	freeNet := -1
	if r.stopping && b.run == nil && !f.closed {
		freeNet = b.net
	}
	b.broadcastLocked()
	f.mu.Unlock()
	if freeNet >= 0 {
		f.releaseNet(b, freeNet)
	}

	if !crashed {
		return
	}
	if f.cfg.OnExit != nil {
		f.cfg.OnExit(b.projectID, b.platform, leases, err)
	}
	// Restart only now, so that OnExit sees the old run fully gone. An
	// Ensure may have restarted it already.
	f.mu.Lock()
	if b.run == nil && b.state == StateCrashed && !f.closed && f.resetting[b.projectID] == 0 {
		f.startLocked(b)
	}
	f.mu.Unlock()
}

// launch prepares b's directory (config, log, temporary files), applies
// the egress policy for its build network and starts buildkitd.
//
// fetchProxy is the URL of the run's fetch proxy (fetchproxy.go), which
// buildkitd's git fetches go through.
//
// onDiskFull is called (from the log copy) when buildkitd's output says it
// ran out of disk space: BuildKit stays wedged after that until restarted.
//
// It returns the cgroup buildkitd runs in ("" when the fleet has none).
func (f *Fleet) launch(b *builder, spec Spec, netIndex int, fetchProxy string, onDiskFull func()) (_ *exec.Cmd, _ <-chan struct{}, egress <-chan error, cgroup string, err error) {
	// What a dead run left in its TMPDIR (BuildKit's buildkit-mount* and
	// buildkit* directories) goes: nothing of a previous run is in use, and
	// its mounts were detached by the cleanup (checked, so that a mount
	// that stayed is never deleted through).
	if mps, err := mountsUnder(b.tmpDir()); err == nil && len(mps) == 0 {
		_ = os.RemoveAll(b.tmpDir())
	} else {
		f.log.Warn("builder temp dir still has mounts; not emptied", "project", b.projectID, "platform", b.platform, "mounts", mps, "err", err)
	}
	for _, d := range []string{b.dir, b.stateDir(), b.tmpDir(), b.sockDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, nil, "", err
		}
	}
	// Certificates of earlier kiln versions: buildkitd serves no TLS now.
	_ = os.RemoveAll(filepath.Join(b.dir, "certs"))
	n := f.cfg.Network
	if err := n.checkCNI(); err != nil {
		return nil, nil, nil, "", err
	}
	// Reservations a killed run left would exhaust the subnet in time.
	n.releaseAddrs(netIndex)
	// The egress policy, with this builder's bridge, is applied while
	// buildkitd starts (iptables takes about as long as buildkitd does):
	// the builder is not ready, and so no step runs, until it is
	// (waitReady).
	egressc := make(chan error, 1)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		egressc <- f.applyEgress()
	}()
	egress = egressc
	own := f.cfg.OwnRegistry()
	if own.Host != "" {
		if err := checkRegistryHost(own.Host); err != nil {
			return nil, nil, nil, "", fmt.Errorf("kiln's registry %q: %w", own.Host, err)
		}
	}
	// The builder's cgroup, afresh: a previous run's is gone (cleanup), so
	// this only clears what a failed launch left.
	if cgroup = f.builderCgroup(b); cgroup != "" {
		f.killCgroup(cgroup)
		if err := f.cg.remove(cgroup); err != nil {
			return nil, nil, nil, "", fmt.Errorf("builder cgroup: %w", err)
		}
		if err := f.cg.create(cgroup, f.cfg.MemoryLimit); err != nil {
			_ = f.cg.remove(cgroup)
			return nil, nil, nil, "", fmt.Errorf("builder cgroup %s: %w", cgroup, err)
		}
		defer func() {
			if err != nil {
				_ = f.cg.remove(cgroup)
			}
		}()
	}
	conf, err := renderConfig(spec, f.cfg.InsecureRegistries, own,
		workerSettings{CNIBinDir: n.CNIBinDir, Bridge: n.bridge(netIndex), Subnet: n.subnet(netIndex).String(), CgroupParent: cgroup})
	if err != nil {
		return nil, nil, nil, "", err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "buildkitd.toml"), conf, 0o600); err != nil {
		return nil, nil, nil, "", err
	}

	args := []string{
		"--config", filepath.Join(b.dir, "buildkitd.toml"),
		"--root", b.stateDir(),
		// The only listener: a unix socket in a 0700 directory, served
		// without TLS. Builds reach it through kiln's gateway, which
		// authorizes each connection; kiln's readiness probe uses it too.
		"--addr", "unix://" + b.sock(),
		// The default, /run/buildkit/otel-grpc.sock, would be shared by
		// all builders.
		"--otel-socket-path", b.otelSock(),
		"--oci-worker-platform", spec.Platform,
	}

	logf, err := openLog(b.logPath())
	if err != nil {
		return nil, nil, nil, "", err
	}
	fmt.Fprintf(logf, "kiln: %s starting %s %s\n", time.Now().Format(time.RFC3339), f.cfg.BuildkitdPath, strings.Join(args, " "))
	// Our own pipe rather than an io.Writer in cmd.Stdout: exec would then
	// make Wait wait for the output copy, which descendants holding the
	// pipe could delay past buildkitd's exit.
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, nil, nil, "", err
	}
	cmd := exec.Command(f.cfg.BuildkitdPath, args...)
	cmd.Dir = b.dir // so buildkitd's cwd marks it as this builder's too
	cmd.Env = buildkitdEnv(filepath.Dir(f.cfg.BuildkitdPath), b.dir, b.tmpDir(), fetchProxy, f.cfg.PassEnv)
	cmd.Stdout, cmd.Stderr = pw, pw
	// Own process group, so the tree can be signalled as one; SIGKILL if
	// kiln dies. (Pdeathsig fires when the OS thread that forked exits; Go
	// only retires threads locked with LockOSThread, which kiln does not
	// use around here.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	pw.Close()
	if err == nil && cgroup != "" {
		// buildkitd starts nothing before it serves, and it cannot serve
		// before this: its RUN steps are all under the cgroup.
		if err = f.cg.enter(cgroup, cmd.Process.Pid); err != nil {
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			_ = cmd.Wait()
			err = fmt.Errorf("move buildkitd into its cgroup: %w", err)
		}
	}
	if err != nil {
		pr.Close()
		logf.Close()
		return nil, nil, nil, "", err
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		// Drained to the end whatever the log file says: a log that
		// cannot be written (a full disk) must not close the pipe and
		// kill buildkitd with SIGPIPE.
		_, _ = io.Copy(io.MultiWriter(bestEffort{logf}, &diskFullWatch{onHit: onDiskFull}), pr)
		pr.Close()
		logf.Close()
	}()
	return cmd, logDone, egress, cgroup, nil
}

// bestEffort is a writer whose failures are ignored.
type bestEffort struct{ w io.Writer }

func (b bestEffort) Write(p []byte) (int, error) {
	_, _ = b.w.Write(p)
	return len(p), nil
}

// waitReady polls buildkitd over the unix socket until it lists a worker
// and the egress policy is applied (egress delivers its outcome). It fails
// when buildkitd exits (gone reports that exited was consumed), when the
// policy could not be applied, when a stop is requested, or after
// StartTimeout.
func (f *Fleet) waitReady(b *builder, r *run, exited <-chan error, logDone <-chan struct{}, egress <-chan error) (err error, gone bool) {
	filtered := false
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.StartTimeout)
	defer cancel()
	// 10 ms: a client held on GetBuildKitConnection sees the builder within
	// about that of buildkitd answering (probe only dials once the socket
	// exists).
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case werr := <-exited:
			waitLog(logDone)
			f.log.Warn("buildkitd exited while starting", "project", b.projectID, "platform", b.platform, "err", werr,
				"last_log_line", lastLine(b.logPath()), "log", b.logPath())
			return f.startFailed(b, "buildkitd exited while starting: "+exitReason(werr)), true
		case <-r.stop:
			return fmt.Errorf("builder %s/%s: stopped while starting: %w", b.projectID, b.platform, errdefs.ErrUnavailable), false
		case <-ctx.Done():
			f.log.Warn("buildkitd not ready in time", "project", b.projectID, "platform", b.platform, "timeout", f.cfg.StartTimeout,
				"last_log_line", lastLine(b.logPath()), "log", b.logPath())
			return f.startFailed(b, fmt.Sprintf("buildkitd not ready within %s", f.cfg.StartTimeout)), false
		case err := <-egress:
			if err != nil {
				f.log.Warn("builder's egress policy not applied", "project", b.projectID, "platform", b.platform, "err", err)
				return f.startFailed(b, "kiln could not apply its network policy"), false
			}
			filtered, egress = true, nil
		case <-tick.C:
			if filtered && probe(ctx, b.sock()) {
				return nil, false
			}
		}
	}
}

// probe reports whether buildkitd answers ListWorkers on sock with at least
// one worker (it exits when it has none, but not before serving).
func probe(ctx context.Context, sock string) bool {
	if _, err := os.Stat(sock); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := client.New(ctx, "unix://"+sock)
	if err != nil {
		return false
	}
	defer c.Close()
	ws, err := c.ListWorkers(ctx)
	return err == nil && len(ws) > 0
}

// buildkitdEnv is the whole environment of a builder: PATH with binDir
// first (buildkitd looks up runc there), HOME and TMPDIR in the builder's
// own directory, ALL_PROXY naming the run's fetch proxy (which git, not
// Go, reads: fetchproxy.go), and the variables of kiln's environment the
// operator named in pass (proxy settings, say). Nothing else of kiln's environment
// reaches a builder: not its cloud credentials (AWS_*), its own settings
// (KILN_*), NOTIFY_SOCKET or BUILDKITD_*. The AWS SDK in buildkitd (S3
// cache exports a build may ask for) is also kept from the machine's
// instance role: it would otherwise fetch kiln's host credentials from the
// metadata service.
func buildkitdEnv(binDir, home, tmp, fetchProxy string, pass []string) []string {
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	env := []string{
		"PATH=" + binDir + string(os.PathListSeparator) + path,
		"HOME=" + home,
		"TMPDIR=" + tmp,
		"AWS_EC2_METADATA_DISABLED=true",
		"ALL_PROXY=" + fetchProxy,
		"all_proxy=" + fetchProxy,
	}
	for _, name := range pass {
		switch name {
		case "PATH", "HOME", "TMPDIR", "AWS_EC2_METADATA_DISABLED", "ALL_PROXY", "all_proxy":
			continue
		}
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	return env
}
