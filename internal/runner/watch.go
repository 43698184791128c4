package runner

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Event is one thing WatchBuild sends: exactly one field is set.
type Event struct {
	Build *build.Build
	Step  *build.Step
	Log   *build.LogLine
}

// watchPoll bounds how long a watcher sleeps without a wake-up: client
// builds store their steps through the Depot API, which does not wake
// watchers.
const watchPoll = time.Second

// logPage is how many log lines a watcher reads from the store at once.
const logPage = 1000

// Watch sends a build's record as events: the build, then every step and
// log line stored so far, then — with follow — changes as they are stored,
// until the build has ended and everything it recorded was sent, or ctx
// ends, or the server shuts down (Unavailable: watch again). A watcher that
// starts late misses nothing: the store is read from the first line, and
// the hub only says when to read again.
func (r *Runner) Watch(ctx context.Context, p auth.Principal, id string, follow bool, send func(Event) error) error {
	if _, err := r.builds.Get(ctx, p, id); err != nil {
		return err
	}
	w := &watcher{r: r, id: id, send: send, steps: map[string]build.Step{}}
	for {
		wake := r.hub.wait(id)
		ended, err := w.sendNew(ctx)
		if err != nil || ended || !follow {
			r.hub.release(id, wake)
			return err
		}
		select {
		case <-ctx.Done():
			r.hub.release(id, wake)
			return ctx.Err()
		case <-r.base.Done():
			r.hub.release(id, wake)
			return fmt.Errorf("kiln serve is shutting down; watch the build again in a moment: %w", errdefs.ErrUnavailable)
		case <-wake:
		case <-time.After(watchPoll):
		}
	}
}

// watcher remembers what one Watch has sent.
type watcher struct {
	r      *Runner
	id     string
	send   func(Event) error
	status build.Status          // the last status sent
	steps  map[string]build.Step // digest → the step as last sent
	cursor int                   // seq of the last log line sent
}

// sendNew sends what changed since the last call. ended is true once the
// build has ended and everything it recorded was sent.
func (w *watcher) sendNew(ctx context.Context) (ended bool, err error) {
	// Read the build first: if it had ended, everything it recorded was
	// stored before, and the reads below see all of it.
	b, err := w.r.store.GetBuild(ctx, w.id)
	if err != nil {
		return false, err
	}
	if b.Status != w.status {
		w.status = b.Status
		b.Secrets = ""
		if err := w.send(Event{Build: &b}); err != nil {
			return false, err
		}
	}
	steps, err := w.r.store.ListSteps(ctx, w.id)
	if err != nil {
		return false, err
	}
	// New steps go before the log lines read with them and finished ones
	// after, so a reader sees a step start, then its lines, then its end.
	// Steps are stored in the order the builder first mentioned them, which
	// is not the order they ran (BuildKit lists a solve's vertices up
	// front, from the last); a reader numbers steps as it first sees them,
	// as buildx does, so a step is sent only once it started (or ended),
	// and each batch in the order the steps started, then ended.
	var starts, ends []build.Step
	for _, st := range steps {
		old, seen := w.steps[st.Digest]
		if seen && old == st {
			continue
		}
		done := !st.CompletedAt.IsZero() || st.Error != ""
		if !seen && !done && st.StartedAt.IsZero() {
			continue // not started: nothing to show yet
		}
		if !seen && done {
			start := st
			start.CompletedAt, start.Error = time.Time{}, ""
			starts = append(starts, start)
		}
		if done {
			ends = append(ends, st)
		} else {
			starts = append(starts, st)
		}
		w.steps[st.Digest] = st
	}
	slices.SortStableFunc(starts, func(a, b build.Step) int { return byTime(a.StartedAt, b.StartedAt) })
	slices.SortStableFunc(ends, func(a, b build.Step) int { return byTime(a.CompletedAt, b.CompletedAt) })
	for i := range starts {
		if err := w.send(Event{Step: &starts[i]}); err != nil {
			return false, err
		}
	}
	for {
		lines, err := w.r.store.ListBuildLogs(ctx, w.id, w.cursor, logPage)
		if err != nil {
			return false, err
		}
		for i := range lines {
			if err := w.send(Event{Log: &lines[i]}); err != nil {
				return false, err
			}
			w.cursor = lines[i].Seq
		}
		if len(lines) < logPage {
			break
		}
	}
	for i := range ends {
		if err := w.send(Event{Step: &ends[i]}); err != nil {
			return false, err
		}
	}
	return b.Terminal(), nil
}

// byTime orders times, the zero time (not known) last.
func byTime(a, b time.Time) int {
	switch {
	case a.IsZero() && b.IsZero():
		return 0
	case a.IsZero():
		return 1
	case b.IsZero():
		return -1
	}
	return a.Compare(b)
}
