package build

import (
	"fmt"
	"slices"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// transitions is the build state machine: for each status, the statuses a
// build in it may move to. A client build is created running; a source
// build is created queued and moves queued → running → pushing. Any build
// that has not ended may end (a cancel, a lost builder and the result race;
// the first end wins), and an ended build never moves again — with one
// exception, [Build.Overturn]: a failure kiln presumed because it restarted
// under a client build gives way to the client's report that it succeeded.
var transitions = map[Status][]Status{
	Queued:    {Running, Succeeded, Failed, Canceled},
	Running:   {Pushing, Succeeded, Failed, Canceled},
	Pushing:   {Succeeded, Failed, Canceled},
	Succeeded: nil,
	Failed:    nil,
	Canceled:  nil,
}

// Terminal reports whether s is an end: succeeded, failed or canceled.
func (s Status) Terminal() bool {
	switch s {
	case Succeeded, Failed, Canceled:
		return true
	}
	return false
}

// CanTransition reports whether a build in status from may move to to.
func CanTransition(from, to Status) bool {
	return slices.Contains(transitions[from], to)
}

// Transition moves b to status to at now, stamping StartedAt when it starts
// running and FinishedAt when it ends. Every change of a build's status
// goes through it. A move the table does not allow changes nothing and is
// errdefs.ErrFailedPrecondition (errEnded for a build that has ended).
func (b *Build) Transition(to Status, now time.Time) error {
	if !CanTransition(b.Status, to) {
		if b.Terminal() {
			return errEnded(*b)
		}
		return fmt.Errorf("build %q is %s and cannot become %s: %w", b.ID, b.Status, to, errdefs.ErrFailedPrecondition)
	}
	b.Status = to
	switch {
	case to == Running:
		b.StartedAt = now
	case to.Terminal():
		b.FinishedAt = now
	}
	return nil
}

// Overturn replaces a presumed failure (reconcile.go: kiln restarted under
// the build and could not know how it ended) with success at now, because
// the build's client reported it succeeded: the client saw its solve end,
// the server only guessed. Anything else is errdefs.ErrFailedPrecondition
// and changes nothing; the caller decides whether the failure was presumed.
func (b *Build) Overturn(to Status, now time.Time) error {
	if b.Status != Failed || to != Succeeded {
		return fmt.Errorf("build %q is %s; only a presumed failure can be overturned, and only by success: %w", b.ID, b.Status, errdefs.ErrFailedPrecondition)
	}
	b.Status = Succeeded
	b.Error = ""
	b.FinishedAt = now
	return nil
}

// Requeue moves a running or pushing source build back to queued, to run
// again from the start: its replica died under it (RequeueSource). It is
// the state machine's one way back, kept out of the table so no other
// transition can take it; the build forgets when it started and where it
// ran. Anything else is errdefs.ErrFailedPrecondition and changes nothing.
func (b *Build) Requeue() error {
	if !b.IsSource() || b.Status != Running && b.Status != Pushing {
		if b.Terminal() {
			return errEnded(*b)
		}
		return fmt.Errorf("build %q is a %s build, %s; only a running source build can be queued again: %w", b.ID, b.EffectiveKind(), b.Status, errdefs.ErrFailedPrecondition)
	}
	b.Status = Queued
	b.StartedAt, b.LastHealthAt, b.Replica, b.Platforms = time.Time{}, time.Time{}, "", ""
	return nil
}

// errEnded is the answer to anything that needs a build that has not ended.
func errEnded(b Build) error {
	return fmt.Errorf("build %q already %s: %w", b.ID, b.Status, errdefs.ErrFailedPrecondition)
}
