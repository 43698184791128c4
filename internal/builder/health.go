package builder

import (
	"bytes"
	"context"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// A builder can be alive and useless: stopped (SIGSTOP, a hung kernel
// call) it keeps its socket and its clients' connections open and answers
// nothing, and out of disk BuildKit stays wedged until it is restarted.
// The fleet notices both and replaces the builder with Recycle:
//
//   - the stall watch probes every builder in use (leases or open gateway
//     connections) with ListWorkers; one that has not answered for
//     StallTimeout is recycled at once, its builds failed with "stopped
//     responding";
//   - the disk watch reads buildkitd's output for "no space left on
//     device"; the builder then takes no new builds and is recycled as soon
//     as no solve is in progress on it (or after StallTimeout, whatever
//     is in progress), its waiting builds carried over to the restart.

// probeTimeout bounds one liveness probe.
const probeTimeout = 2 * time.Second

// diskFullMarker is what buildkitd's log says when a write hit ENOSPC.
var diskFullMarker = []byte("no space left on device")

// Recycle kills the builder's whole process tree now (SIGKILL, which ends
// a stopped process too), fails the builds using it with cause (OnExit)
// and starts it again. It reports whether there was a running builder to
// recycle. cause is said to those builds' users: no server paths.
func (f *Fleet) Recycle(projectID, platform string, cause error) bool {
	platform, _, _ = parsePlatform(platform)
	f.mu.Lock()
	b, ok := f.builders[key{projectID, platform}]
	if !ok {
		f.mu.Unlock()
		return false
	}
	r := f.recycleLocked(b, cause, false)
	f.mu.Unlock()
	return f.kill(b, r, cause)
}

// recycleLocked marks b's run as killed for cause and returns its process,
// or nil when b has no ready run (starting, stopping or being recycled
// already: nothing to do).
func (f *Fleet) recycleLocked(b *builder, cause error, keepLeases bool) *run {
	r := b.run
	if r == nil || r.stopping || r.cause != nil || r.proc == nil || b.state != StateReady {
		return nil
	}
	r.cause, r.keepLeases = cause, keepLeases
	// Like a crash: not handed out while it is replaced.
	b.state = StateCrashed
	b.broadcastLocked()
	return r
}

// kill ends r's process group; runBuilder sees the exit and does the rest
// (cleanup, OnExit with r.cause, restart).
func (f *Fleet) kill(b *builder, r *run, cause error) bool {
	if r == nil {
		return false
	}
	f.log.Warn("recycling builder", "project", b.projectID, "platform", b.platform, "cause", cause)
	f.mu.Lock()
	proc := r.proc
	f.mu.Unlock()
	_ = unix.Kill(-proc.Pid, unix.SIGKILL)
	_ = proc.Kill()
	return true
}

// stalled is the error of the builds of a builder that stopped answering.
func stalled(b *builder, d time.Duration) error {
	return errdefs.Wrapf(errdefs.ErrUnavailable, nil, "the builder for project %s (%s) stopped responding for %s; kiln restarted it; retry the build",
		b.projectID, b.platform, d.Round(time.Second))
}

// diskFull records that run r of b ran out of disk (from the log copy).
func (f *Fleet) diskFull(b *builder, r *run) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.run != r || r.stopping || r.cause != nil || b.wedged != nil {
		return
	}
	b.wedged = errdefs.Wrapf(errdefs.ErrExhausted, nil, "the builder for project %s (%s) ran out of disk space; kiln restarted it; retry the build",
		b.projectID, b.platform)
	b.wedgedAt = time.Now()
	f.log.Warn("builder out of disk space; it is restarted once no solve is in progress", "project", b.projectID, "platform", b.platform)
	b.broadcastLocked()
}

// watch runs the stall and disk watches until Close.
func (f *Fleet) watch() {
	defer f.wg.Done()
	every := min(max(f.cfg.StallTimeout/4, 50*time.Millisecond), 5*time.Second)
	// A tick long after the last means kiln itself did not run (stopped,
	// suspended): nothing could be observed, so no builder is blamed for
	// that time.
	ticker.Run(f.quit, every, func(now time.Time, paused time.Duration) { f.checkHealth(now, paused > 0) })
}

// checkHealth is one round of the watches at now: it recycles the
// builders found stalled or wedged and starts the due probes. unobserved
// says kiln could not watch since the last round: every builder's silence
// counts from now.
func (f *Fleet) checkHealth(now time.Time, unobserved bool) {
	var probes []*builder
	var kills []*run
	var killed []*builder
	var causes []error
	var outOfDisk []bool
	f.mu.Lock()
	for _, b := range f.builders {
		if b.state != StateReady || b.run == nil || b.run.stopping || b.run.cause != nil {
			continue
		}
		inUse := b.InUse()
		if !inUse || unobserved {
			b.answered = now
		}
		var cause error
		var keep bool
		switch {
		case b.wedged != nil && b.Conns() == 0:
			cause, keep = b.wedged, true
		case b.wedged != nil && now.Sub(b.wedgedAt) > f.cfg.StallTimeout:
			cause = b.wedged
		case inUse && now.Sub(b.answered) > f.cfg.StallTimeout:
			cause = stalled(b, now.Sub(b.answered))
		}
		if cause != nil {
			if r := f.recycleLocked(b, cause, keep); r != nil {
				kills, killed, causes = append(kills, r), append(killed, b), append(causes, cause)
				outOfDisk = append(outOfDisk, cause == b.wedged)
			}
			continue
		}
		if inUse && !b.probing {
			b.probing = true
			probes = append(probes, b)
		}
	}
	f.mu.Unlock()
	for i, r := range kills {
		if outOfDisk[i] {
			f.releaseReserve() // room for the new buildkitd to collect the full disk's leftovers
		}
		f.kill(killed[i], r, causes[i])
	}
	if len(kills) == 0 {
		f.keepReserve()
	}
	for _, b := range probes {
		f.wg.Add(1)
		go f.probeLiveness(b)
	}
}

// probeLiveness asks b's buildkitd for its workers and, if it answers,
// records that it did.
func (f *Fleet) probeLiveness(b *builder) {
	defer f.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	ok := probe(ctx, b.sock())
	f.mu.Lock()
	defer f.mu.Unlock()
	b.probing = false
	if ok {
		b.answered = time.Now()
	}
}

// diskFullWatch sees buildkitd's output on its way to the log and calls
// onHit (once) when it says a write failed for lack of space.
type diskFullWatch struct {
	onHit func()
	tail  []byte // the end of the previous write, for a marker split across writes
	hit   bool
}

func (w *diskFullWatch) Write(p []byte) (int, error) {
	if w.hit || w.onHit == nil {
		return len(p), nil
	}
	buf := append(w.tail, p...)
	if bytes.Contains(buf, diskFullMarker) {
		w.hit = true
		w.onHit()
		return len(p), nil
	}
	keep := min(len(buf), len(diskFullMarker)-1)
	w.tail = append(w.tail[:0], buf[len(buf)-keep:]...)
	return len(p), nil
}
