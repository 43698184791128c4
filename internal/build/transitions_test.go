package build

import (
	"errors"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func TestTransitions(t *testing.T) {
	all := []Status{Queued, Running, Pushing, Succeeded, Failed, Canceled}
	ends := []Status{Succeeded, Failed, Canceled}
	for _, tc := range []struct {
		from    Status
		allowed []Status
	}{
		{Queued, append([]Status{Running}, ends...)},
		{Running, append([]Status{Pushing}, ends...)},
		{Pushing, ends},
		{Succeeded, nil},
		{Failed, nil},
		{Canceled, nil},
	} {
		for _, to := range all {
			want := false
			for _, a := range tc.allowed {
				want = want || a == to
			}
			if got := CanTransition(tc.from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", tc.from, to, got, want)
			}
			b := Build{ID: "b1", Status: tc.from}
			err := b.Transition(to, time.Unix(100, 0))
			switch {
			case want && err != nil:
				t.Errorf("%s → %s: %v", tc.from, to, err)
			case want && b.Status != to:
				t.Errorf("%s → %s: status is %s", tc.from, to, b.Status)
			case !want && !errors.Is(err, errdefs.ErrFailedPrecondition):
				t.Errorf("%s → %s: %v, want ErrFailedPrecondition", tc.from, to, err)
			case !want && b.Status != tc.from:
				t.Errorf("%s → %s refused but status is %s", tc.from, to, b.Status)
			}
		}
	}
	// Every status is in the table, and only ends are terminal.
	for _, s := range all {
		if _, ok := transitions[s]; !ok {
			t.Errorf("%s is missing from the transition table", s)
		}
		if s.Terminal() != (len(transitions[s]) == 0) {
			t.Errorf("%s: Terminal() = %v but it has %d moves", s, s.Terminal(), len(transitions[s]))
		}
	}
	if CanTransition("bogus", Running) || CanTransition(Queued, "bogus") {
		t.Error("an unknown status moves")
	}
}

// Transition stamps the times its moves imply, and an ended build answers
// what every caller has always said of one.
func TestTransitionStampsAndRefusals(t *testing.T) {
	t0, t1 := time.Unix(100, 0), time.Unix(200, 0)
	b := Build{ID: "b1", Status: Queued}
	if err := b.Transition(Running, t0); err != nil || !b.StartedAt.Equal(t0) || !b.FinishedAt.IsZero() {
		t.Fatalf("queued → running: %v, %+v", err, b)
	}
	if err := b.Transition(Pushing, t1); err != nil || !b.StartedAt.Equal(t0) || !b.FinishedAt.IsZero() {
		t.Fatalf("running → pushing: %v, %+v", err, b)
	}
	if err := b.Transition(Succeeded, t1); err != nil || !b.FinishedAt.Equal(t1) {
		t.Fatalf("pushing → succeeded: %v, %+v", err, b)
	}
	err := b.Transition(Failed, t1.Add(time.Second))
	if want := `build "b1" already succeeded: failed precondition`; err == nil || err.Error() != want || b.Status != Succeeded || !b.FinishedAt.Equal(t1) {
		t.Errorf("succeeded → failed: %v (want %q), %+v", err, want, b)
	}
	p := Build{ID: "b2", Status: Pushing}
	if err := p.Transition(Running, t1); !errors.Is(err, errdefs.ErrFailedPrecondition) || p.Status != Pushing || !p.StartedAt.IsZero() {
		t.Errorf("pushing → running: %v, %+v", err, p)
	}
}

func TestEffectiveKind(t *testing.T) {
	for kind, want := range map[Kind]Kind{"": KindClient, KindClient: KindClient, KindSource: KindSource} {
		if got := (Build{Kind: kind}).EffectiveKind(); got != want {
			t.Errorf("EffectiveKind of %q = %q, want %q", kind, got, want)
		}
	}
}

// Requeue is the one way back: a running or pushing source build returns
// to queued, forgetting where and when it ran; nothing else may take it.
func TestRequeue(t *testing.T) {
	for _, from := range []Status{Running, Pushing} {
		b := Build{ID: "b1", Kind: KindSource, Status: from, StartedAt: time.Unix(100, 0), LastHealthAt: time.Unix(101, 0), Replica: "r1", Platforms: "linux/amd64"}
		if err := b.Requeue(); err != nil {
			t.Fatalf("%s: %v", from, err)
		}
		if b.Status != Queued || !b.StartedAt.IsZero() || !b.LastHealthAt.IsZero() || b.Replica != "" || b.Platforms != "" {
			t.Errorf("%s requeued: %+v", from, b)
		}
		if b.Transition(Running, time.Unix(200, 0)) != nil {
			t.Errorf("%s requeued cannot start again", from)
		}
	}
	for _, b := range []Build{
		{ID: "q", Kind: KindSource, Status: Queued},
		{ID: "s", Kind: KindSource, Status: Succeeded},
		{ID: "f", Kind: KindSource, Status: Failed},
		{ID: "c", Kind: KindSource, Status: Canceled},
		{ID: "client", Kind: KindClient, Status: Running},
	} {
		before := b
		if err := b.Requeue(); !errors.Is(err, errdefs.ErrFailedPrecondition) || b.Status != before.Status {
			t.Errorf("%s (%s %s): Requeue = %v, build %+v", b.ID, b.Kind, b.Status, err, b)
		}
	}
	for _, from := range []Status{Running, Pushing} {
		if CanTransition(from, Queued) {
			t.Errorf("the table lets %s go back to queued: only Requeue may", from)
		}
	}
}
