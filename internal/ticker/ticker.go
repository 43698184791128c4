// Package ticker runs kiln's periodic loops until they are told to stop,
// and tells the watches among them (the health reaper, the builder health
// watch) when kiln itself did not run, so they blame no one for that time.
package ticker

import "time"

// gapFactor: a tick this many intervals after the previous one means the
// process did not run in between (a scheduling delay on a busy machine is
// a fraction of an interval). A false alarm only gives the watched a
// fresh start.
const gapFactor = 3

// Run calls f every interval until done is closed. paused is how long the
// process did not run before this tick (stopped with SIGSTOP, the machine
// suspended), or 0: time that passed unobserved, which f should not count
// against anyone.
func Run(done <-chan struct{}, every time.Duration, f func(now time.Time, paused time.Duration)) {
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := time.Now()
		f(now, Paused(last, now, every))
		last = now
	}
}

// Paused is the gap between two ticks every apart, at last and now, if it
// means the process did not run, or 0. A stopped process's monotonic clock
// keeps running, so a pause shows as a long monotonic gap; a suspended
// machine's does not, but its wall clock jumps (Round(0) drops the
// monotonic reading).
func Paused(last, now time.Time, every time.Duration) time.Duration {
	gap := max(now.Sub(last), now.Round(0).Sub(last.Round(0)))
	if gap > gapFactor*every {
		return gap
	}
	return 0
}
