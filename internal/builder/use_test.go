package builder

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// Use: idle time counts from the end of the last lease or connection, and
// an Ensure counts as use only without leases.
func TestUse(t *testing.T) {
	var mu sync.Mutex
	var u Use
	t0 := time.Unix(1000, 0)
	u.Touch(t0)
	if u.InUse() || u.IdleFor(t0.Add(time.Minute)) != time.Minute {
		t.Fatalf("fresh: in use %v, idle %s", u.InUse(), u.IdleFor(t0.Add(time.Minute)))
	}
	u.Lease("b1", t0)
	u.Lease("b1", t0.Add(time.Second)) // again: the first time stays
	u.Lease("b2", t0.Add(2*time.Second))
	u.Touch(t0.Add(3 * time.Second)) // ignored: leased
	if !u.InUse() || u.IdleFor(t0.Add(time.Hour)) != 0 || !u.Holds("b1") {
		t.Fatal("leased builder is idle")
	}
	release := u.Hold(&mu)
	u.Release("b1", t0.Add(4*time.Second))
	u.Release("b2", t0.Add(5*time.Second))
	if !u.InUse() || u.Conns() != 1 {
		t.Fatal("a builder with an open connection is idle")
	}
	release()
	release() // once
	if u.InUse() || u.Conns() != 0 {
		t.Fatalf("after the connection closed: conns %d", u.Conns())
	}
	u.Lease("b3", t0.Add(10*time.Second))
	u.Lease("b4", t0.Add(20*time.Second))
	if got := u.TakeLeases(t0.Add(10*time.Second), t0.Add(30*time.Second)); !slices.Equal(got, []string{"b3"}) {
		t.Errorf("TakeLeases up to b3's time: %v", got)
	}
	if got := u.LeaseIDs(); !slices.Equal(got, []string{"b4"}) {
		t.Errorf("left %v", got)
	}
	if got := u.TakeLeases(time.Time{}, t0.Add(40*time.Second)); !slices.Equal(got, []string{"b4"}) || u.InUse() {
		t.Errorf("TakeLeases all: %v", got)
	}
}
