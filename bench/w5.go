package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// W5: builder acquire latency through kiln's API — CreateBuild, then
// GetBuildKitConnection until it answers active, honouring wait_ms as a
// Depot client does — with the builder running, stopped with its state on
// disk (idle-stopped by a kiln serve with a short --builder-idle-timeout),
// and for a brand-new project. The baseline is the same moment for plain
// buildkitd: a connection that answers ListWorkers, to the running daemon,
// to a daemon started on an existing state directory, and to a daemon
// started on an empty one.
func (r *runner) w5(ctx context.Context) error {
	if r.wants("W5.running") {
		if err := r.w5Running(ctx); err != nil {
			return err
		}
	}
	if !r.wants("W5.stopped") && !r.wants("W5.new") {
		return nil
	}
	return r.w5Restarts(ctx)
}

func (r *runner) w5Running(ctx context.Context) error {
	running := newPair("W5.running", "W5 acquire: builder running", "ms")
	running.Note = "kiln: CreateBuild → GetBuildKitConnection active; baseline: mTLS dial + ListWorkers."
	return r.series(ctx, running, func(i int, s side) (float64, error) {
		if s == sideBase {
			start := time.Now()
			c, err := r.base.client(ctx)
			if err != nil {
				return 0, err
			}
			d := time.Since(start)
			c.Close()
			return ms(d), nil
		}
		a, err := r.kiln.acquire(ctx, r.project, 30*time.Second, 0)
		if err != nil {
			return 0, err
		}
		r.kiln.finish(a)
		return ms(a.Took), nil
	})
}

// restartRuns is the least number of timed runs of the builder-start
// series: a start takes 200–600 ms on a 2-core machine and varies with
// whatever else runs, and their target is a p90, which 10 samples put on
// the second-slowest.
const restartRuns = 30

// w5Restarts measures acquiring a stopped builder and a new project's on a
// kiln serve of its own, whose builders stop after a second of idleness.
func (r *runner) w5Restarts(ctx context.Context) error {
	idle := "1s"
	r.logf("  starting a second kiln serve with --builder-idle-timeout %s", idle)
	k5, err := startKiln(ctx, r.kilnBin, r.cfg.buildkitd, filepath.Join(r.state, "k5"), "--builder-idle-timeout", idle)
	if err != nil {
		return err
	}
	r.onCleanup(k5.stop)
	proj, err := k5.createProject(ctx, "bench-w5")
	if err != nil {
		return err
	}
	warm := filepath.Join(r.tmp, "ctx", "w5")
	if err := smallContext(warm, r.sizes.SmallFiles, "cat /src/* | wc -c > /size"); err != nil {
		return err
	}
	if _, err := k5.build(ctx, r.buildTimeout(), proj, buildSpec{Context: warm}); err != nil {
		return err
	}
	// The baseline's daemon with state: same flags, its own directory,
	// one build's cache in it.
	b5, err := newBaseline(filepath.Join(r.state, "b5"), r.cfg.buildkitd, r.cfg.buildctl, r.rep.Setup.KilnBuilderArgs, r.baseConfig())
	if err != nil {
		return err
	}
	r.onCleanup(b5.stop)
	if _, err := b5.start(ctx); err != nil {
		return err
	}
	if _, err := b5.build(ctx, r.buildTimeout(), buildSpec{Context: warm}); err != nil {
		return err
	}
	b5.stop()

	// Twice: as a Depot client polls (wait_ms), and polling every 10 ms
	// like the baseline's probe, which shows kiln's own start latency.
	for _, poll := range []time.Duration{0, 10 * time.Millisecond} {
		if !r.wants("W5.stopped") {
			break
		}
		stopped := newPair("W5.stopped", "W5 acquire: builder stopped, its state kept", "ms")
		stopped.minRuns = restartRuns
		stopped.Note = "kiln: idle-stopped builder (no PID in /debug/builders) restarted by GetBuildKitConnection, polled as wait_ms asks; baseline: buildkitd started on its state dir until ListWorkers answers (polled every 10 ms)."
		if poll > 0 {
			stopped.ID, stopped.Name = "W5.stopped.poll10ms", "W5 acquire: stopped, kiln polled every 10 ms"
			stopped.Note = "The same, with GetBuildKitConnection called every 10 ms instead of after wait_ms: kiln's own latency without the client's polling interval."
		}
		var polls []float64
		err = r.series(ctx, stopped, func(i int, s side) (float64, error) {
			if s == sideBase {
				d, err := b5.start(ctx)
				b5.stop()
				return ms(d), err
			}
			if _, err := k5.waitBuilder(ctx, proj, 60*time.Second, "stopped", func(b builderStatus) bool { return b.State == "stopped" && b.PID == 0 }); err != nil {
				return 0, err
			}
			a, err := k5.acquire(ctx, proj, 2*time.Minute, poll)
			if err != nil {
				return 0, err
			}
			k5.finish(a)
			polls = append(polls, float64(a.Polls))
			notePolls(stopped, polls)
			return ms(a.Took), nil
		})
		if err != nil {
			return err
		}
	}

	if !r.wants("W5.new") {
		return nil
	}
	fresh := newPair("W5.new", "W5 acquire: brand-new project", "ms")
	fresh.minRuns = restartRuns
	fresh.Note = "kiln: first build of a project just created (creation not timed); baseline: buildkitd started on an empty state dir."
	var polls []float64
	err = r.series(ctx, fresh, func(i int, s side) (float64, error) {
		if s == sideBase {
			dir := filepath.Join(r.state, "b5new", strconv.Itoa(i))
			nb, err := newBaseline(dir, r.cfg.buildkitd, r.cfg.buildctl, r.rep.Setup.KilnBuilderArgs, r.baseConfig())
			if err != nil {
				return 0, err
			}
			d, err := nb.start(ctx)
			nb.stop()
			_ = os.RemoveAll(dir)
			return ms(d), err
		}
		p, err := k5.createProject(ctx, fmt.Sprintf("bench-w5-new-%d", i))
		if err != nil {
			return 0, err
		}
		a, err := k5.acquire(ctx, p, 2*time.Minute, 0)
		if err != nil {
			return 0, err
		}
		k5.finish(a)
		polls = append(polls, float64(a.Polls))
		notePolls(fresh, polls)
		// Its idle stop (processes, mounts, bridge, iptables) must not
		// overlap the next run of either side, as the baseline's stop
		// does not: wait for it, untimed.
		if _, err := k5.waitBuilder(ctx, p, 60*time.Second, "stopped", func(b builderStatus) bool { return b.State == "stopped" && b.PID == 0 }); err != nil {
			return 0, err
		}
		return ms(a.Took), nil
	})
	return err
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// baseConfig is the buildkitd.toml the baseline daemons share (kiln's).
func (r *runner) baseConfig() []byte {
	b, err := os.ReadFile(filepath.Join(r.base.dir, "buildkitd.toml"))
	if err != nil {
		return nil
	}
	return b
}

// notePolls appends how many GetBuildKitConnection calls kiln needed.
func notePolls(p *pair, polls []float64) {
	base, _, _ := strings.Cut(p.Note, " kiln needed")
	p.Note = base + fmt.Sprintf(" kiln needed %.0f GetBuildKitConnection calls (median).", summarize(polls).Median)
}
