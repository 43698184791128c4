package ticker

import (
	"testing"
	"time"
)

func TestPaused(t *testing.T) {
	every := time.Second
	last := time.Now()
	for _, c := range []struct {
		after time.Duration
		want  bool
	}{
		{every, false},
		{2 * every, false}, // a busy machine's late tick
		{3 * every, false},
		{10 * every, true}, // SIGSTOP, then SIGCONT
	} {
		if got := Paused(last, last.Add(c.after), every) > 0; got != c.want {
			t.Errorf("a tick %v after the last: paused %v, want %v", c.after, got, c.want)
		}
	}
	// A suspended machine: the monotonic clock stood still, the wall clock
	// jumped.
	wall := last.Round(0).Add(time.Hour)
	if Paused(last.Round(0), wall, every) == 0 {
		t.Errorf("a wall-clock jump of an hour is not a pause")
	}
}

func TestRunStopsWhenDone(t *testing.T) {
	done := make(chan struct{})
	ticks := make(chan time.Duration, 10)
	ended := make(chan struct{})
	go func() {
		Run(done, time.Millisecond, func(_ time.Time, paused time.Duration) {
			select {
			case ticks <- paused:
			default:
			}
		})
		close(ended)
	}()
	<-ticks
	close(done)
	<-ended
}
