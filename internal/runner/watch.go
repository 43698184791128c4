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
	// A reader sees a step start, then its lines, then its end, as buildx
	// shows them, and numbers steps as it first sees them: so a step is sent
	// only once it started (or ended), and the batch's step events and log
	// lines go out in the order they happened (by time; a start before the
	// lines of its time, an end after them). Steps are not stored in the
	// order they ran: BuildKit lists a solve's vertices up front, from the
	// last, and a client reports its steps in the order it saw them.
	var tl timeline
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
			tl.add(start, false)
		}
		tl.add(st, done)
		w.steps[st.Digest] = st
	}
	tl.sort()
	for {
		lines, err := w.r.store.ListBuildLogs(ctx, w.id, w.cursor, logPage)
		if err != nil {
			return false, err
		}
		for i := range lines {
			if err := tl.sendUntil(w.send, lines[i].At, lines[i].Digest); err != nil {
				return false, err
			}
			if err := w.send(Event{Log: &lines[i]}); err != nil {
				return false, err
			}
			w.cursor = lines[i].Seq
		}
		if len(lines) < logPage {
			break
		}
	}
	if err := tl.sendUntil(w.send, time.Time{}, ""); err != nil {
		return false, err
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

// timeline orders one batch of step events: starts and ends, by time.
type timeline struct {
	events []stepEvent
	next   int             // the first event not sent yet
	sent   map[string]bool // steps whose start was sent out of turn, by digest
}

type stepEvent struct {
	step build.Step
	end  bool
	at   time.Time // when it happened; zero: not known
}

func (t *timeline) add(st build.Step, end bool) {
	at := st.StartedAt
	if end {
		at = st.CompletedAt
	}
	t.events = append(t.events, stepEvent{step: st, end: end, at: at})
}

// sort orders the events by time (unknown last), an end before a start of
// the same time (one step ended, the next began; a step's own start still
// goes first: see send).
func (t *timeline) sort() {
	slices.SortStableFunc(t.events, func(a, b stepEvent) int {
		if c := byTime(a.at, b.at); c != 0 {
			return c
		}
		switch {
		case a.end && !b.end:
			return -1
		case !a.end && b.end:
			return 1
		}
		return 0
	})
}

// sendUntil sends the events before a log line of step digest at time at
// (times are stored in milliseconds: what happened in the line's own
// millisecond goes after it), then digest's start if it is still to come.
// A zero at sends everything left.
func (t *timeline) sendUntil(send func(Event) error, at time.Time, digest string) error {
	for ; t.next < len(t.events); t.next++ {
		e := t.events[t.next]
		if !at.IsZero() && (e.at.IsZero() || !e.at.Before(at)) {
			break
		}
		if err := t.send(send, e); err != nil {
			return err
		}
	}
	if digest == "" {
		return nil
	}
	for _, e := range t.events[t.next:] {
		if !e.end && e.step.Digest == digest {
			return t.send(send, e)
		}
	}
	return nil
}

// send sends e, unless it is a start already sent; before an end, its
// step's start if that is still to come.
func (t *timeline) send(send func(Event) error, e stepEvent) error {
	d := e.step.Digest
	if !e.end {
		if t.sent[d] {
			return nil
		}
		if t.sent == nil {
			t.sent = map[string]bool{}
		}
		t.sent[d] = true
		return send(Event{Step: &e.step})
	}
	for _, s := range t.events[t.next:] {
		if !s.end && s.step.Digest == d {
			if err := t.send(send, s); err != nil {
				return err
			}
			break
		}
	}
	return send(Event{Step: &e.step})
}
