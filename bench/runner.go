package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// runner holds what one run started; every process in it is stopped by
// cleanup, by PID.
type runner struct {
	cfg   config
	sizes Sizes
	root  string // repository
	tmp   string // everything the run writes
	// state holds what the daemons write: both buildkitd state dirs,
	// kiln's data dir (builders, registry) and distribution's storage. A
	// tmpfs unless -disk (see Run).
	state string
	log   io.Writer
	start time.Time
	rep   *Report

	kilnBin string
	kiln    *kilnServer // W1–W4, and W5's running builder
	base    *baseline   // the shared baseline daemon
	project string      // kiln project of W1 and W2 (its builder is warm)

	// cleanups run in reverse order at the end (extra servers, daemons).
	cleanups []func()
	// wdeadline: series of the current workload start no new run after it.
	wdeadline time.Time
	wend      time.Time    // the current workload's own limit for new runs
	builds    atomic.Int64 // numbers the kept build logs
}

// buildTimeout bounds one build.
func (r *runner) buildTimeout() time.Duration {
	if r.cfg.smoke {
		return 90 * time.Second
	}
	return 4 * time.Minute
}

func (r *runner) setup(ctx context.Context) error {
	r.kilnBin = r.cfg.kilnBin
	if r.kilnBin == "" {
		r.logf("building kiln from %s", r.root)
		bin, err := buildKiln(ctx, r.root, r.tmp)
		if err != nil {
			return err
		}
		r.kilnBin = bin
	}
	if v, err := exec.Command(r.cfg.buildkitd, "--version").Output(); err == nil {
		r.rep.Setup.BuildkitdVersion = strings.TrimSpace(string(v))
	}
	r.logf("starting kiln serve")
	k, err := startKiln(ctx, r.kilnBin, r.cfg.buildkitd, filepath.Join(r.state, "k"), r.kilnServeArgs()...)
	if err != nil {
		return err
	}
	r.kiln = k
	if r.project, err = k.createProject(ctx, "bench"); err != nil {
		return err
	}
	// A first build starts the project's builder; its buildkitd.toml and
	// flags are what the baseline daemon is given.
	warm := filepath.Join(r.tmp, "ctx", "warm")
	if err := smallContext(warm, 2, "true"); err != nil {
		return err
	}
	if _, err := k.build(ctx, r.buildTimeout(), r.project, buildSpec{Context: warm}); err != nil {
		return fmt.Errorf("first kiln build: %w", err)
	}
	bs, err := k.builder(ctx, r.project)
	if err != nil {
		return err
	}
	kilnArgs, err := kilnBuilderArgs(bs.LogPath)
	if err != nil {
		return err
	}
	toml, err := os.ReadFile(filepath.Join(bs.StateDir, "buildkitd.toml"))
	if err != nil {
		return err
	}
	r.rep.Setup.KilnBuilderArgs = kilnArgs
	r.rep.Setup.ConfigIdentical = true
	r.rep.Setup.ConfigNote = "Its buildkitd.toml is a copy of the one kiln wrote for its builder (OCI worker, overlayfs snapshotter, runc, kiln's GC policy, no insecure entitlements, bridge networking for RUN steps) with a bridge and subnet of its own, and its flags are kiln's with this daemon's paths plus a TCP listener with mutual TLS"
	r.rep.Setup.Transport = "buildctl reaches the baseline buildkitd directly over TCP on 127.0.0.1 with mutual TLS; kiln build reaches kiln's builder gateway (kiln serve's port, mutual TLS, the per-build certificate authorized against the build) which splices to the builder's unix socket. Certificates are ECDSA P-256 from kiln's pki package; the clients run as separate processes (buildctl, kiln build)"

	r.logf("starting the baseline buildkitd")
	b, err := newBaseline(filepath.Join(r.state, "b"), r.cfg.buildkitd, r.cfg.buildctl, kilnArgs, toml)
	if err != nil {
		return err
	}
	if _, err := b.start(ctx); err != nil {
		return err
	}
	r.base = b
	r.rep.Setup.BuildkitdArgs = b.args
	if _, err := b.build(ctx, r.buildTimeout(), buildSpec{Context: warm}); err != nil {
		return fmt.Errorf("first baseline build: %w", err)
	}
	return nil
}

// kilnServeArgs: extra flags of the main kiln serve.
func (r *runner) kilnServeArgs() []string {
	return nil
}

// cleanup stops everything the run started, newest first.
func (r *runner) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
	if r.base != nil {
		r.base.stop()
	}
	if r.kiln != nil {
		r.kiln.stop()
	}
	killUnder(r.tmp)
	if err := unmountUnder(r.tmp); err != nil {
		r.logf("cleanup: %v", err)
	}
}

func (r *runner) onCleanup(f func()) { r.cleanups = append(r.cleanups, f) }

// side is one of the two ways a build is run.
type side int

const (
	sideBase side = iota
	sideKiln
)

func (s side) String() string { return [...]string{"baseline", "kiln"}[s] }

// order alternates which side goes first, so slow drift of the machine
// (other work on it) does not always favour one side.
func order(i int) []side {
	if i%2 == 0 {
		return []side{sideBase, sideKiln}
	}
	return []side{sideKiln, sideBase}
}

// build runs spec on one side: buildctl against the baseline daemon, or
// kiln build in project.
func (r *runner) build(ctx context.Context, s side, project string, spec buildSpec) (time.Duration, error) {
	var res runResult
	var err error
	if s == sideBase {
		res, err = r.base.build(ctx, r.buildTimeout(), spec)
	} else {
		res, err = r.kiln.build(ctx, r.buildTimeout(), project, spec)
	}
	if r.cfg.keep {
		// With -keep, every build's progress output stays for reading.
		n := r.builds.Add(1)
		name := fmt.Sprintf("%05d-%s-%s.txt", n, s, filepath.Base(spec.Context))
		_ = os.MkdirAll(filepath.Join(r.tmp, "logs"), 0o755)
		_ = os.WriteFile(filepath.Join(r.tmp, "logs", name), []byte(fmt.Sprintf("took %s\n%s", res.Took, res.Output)), 0o644)
	}
	return res.Took, err
}

// builderPID is the buildkitd process of a side (kiln: project's builder).
func (r *runner) builderPID(ctx context.Context, s side, project string) (int, error) {
	if s == sideBase {
		return r.base.pid(), nil
	}
	b, err := r.kiln.builder(ctx, project)
	if err != nil {
		return 0, err
	}
	if b.PID == 0 {
		return 0, fmt.Errorf("kiln builder of %s is not running (%s)", project, b.State)
	}
	return b.PID, nil
}

// record adds a finished series to the report and logs it.
func (r *runner) record(p *pair) *Result {
	res := p.finish()
	r.rep.add(res)
	var parts []string
	for _, st := range []struct {
		name string
		s    *Stat
	}{{"baseline", res.Baseline}, {"kiln", res.Kiln}} {
		if st.s != nil {
			parts = append(parts, fmt.Sprintf("%s %s/%s", st.name, fmtVal(st.s.Median, res.Unit), fmtVal(st.s.P90, res.Unit)))
		}
	}
	if res.RatioMedian != 0 {
		parts = append(parts, fmt.Sprintf("ratio %.2f", res.RatioMedian))
	}
	if res.Pending != "" {
		parts = append(parts, "kiln pending: "+res.Pending)
	}
	r.logf("  %-44s %s", res.Name, strings.Join(parts, "  "))
	return res
}
