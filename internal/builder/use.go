package builder

import (
	"slices"
	"sync"
	"time"
)

// Use is what keeps a builder from being idle, for every driver (this
// package's Fleet, internal/builder/kube's): the leases of the builds that
// use it and the gateway connections open to it. Idle time counts from
// the end of the last of them, or from the last Ensure of a builder with
// no lease (Touch). Its methods are called under the fleet's lock; the
// zero value is ready to use.
type Use struct {
	leases   map[string]time.Time // lease id (a build id) → when it was taken
	conns    int                  // open gateway connections; a builder with any is in use
	lastUsed time.Time
}

// Lease records leaseID as using the builder (once; a second Lease of it
// keeps the first time).
func (u *Use) Lease(leaseID string, now time.Time) {
	if u.leases == nil {
		u.leases = map[string]time.Time{}
	}
	if _, ok := u.leases[leaseID]; !ok {
		u.leases[leaseID] = now
	}
}

// Holds reports whether leaseID holds the builder.
func (u *Use) Holds(leaseID string) bool {
	_, ok := u.leases[leaseID]
	return ok
}

// Release ends leaseID's lease, if it has one.
func (u *Use) Release(leaseID string, now time.Time) {
	if _, ok := u.leases[leaseID]; !ok {
		return
	}
	delete(u.leases, leaseID)
	u.touchIfUnused(now)
}

// Hold marks a gateway connection open; release, which takes mu (the
// fleet's lock), closes it, once.
func (u *Use) Hold(mu *sync.Mutex) (release func()) {
	u.conns++
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			u.conns--
			u.touchIfUnused(time.Now())
		})
	}
}

// Touch counts an Ensure as use of a builder without leases.
func (u *Use) Touch(now time.Time) {
	if len(u.leases) == 0 {
		u.lastUsed = now
	}
}

func (u *Use) touchIfUnused(now time.Time) {
	if len(u.leases) == 0 && u.conns == 0 {
		u.lastUsed = now
	}
}

// InUse reports whether a lease or a connection holds the builder.
func (u *Use) InUse() bool { return len(u.leases) > 0 || u.conns > 0 }

// IdleFor is how long the builder has been unused at now (0 in use).
func (u *Use) IdleFor(now time.Time) time.Duration {
	if u.InUse() {
		return 0
	}
	return now.Sub(u.lastUsed)
}

// Conns is the number of open gateway connections.
func (u *Use) Conns() int { return u.conns }

// LeaseIDs lists the leases, sorted.
func (u *Use) LeaseIDs() []string {
	out := make([]string, 0, len(u.leases))
	for l := range u.leases {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// TakeLeases ends the leases taken at or before upTo (all, with a zero
// upTo) and returns them, sorted: the builds a lost builder fails. Idle
// time counts from now.
func (u *Use) TakeLeases(upTo, now time.Time) []string {
	var out []string
	for l, at := range u.leases {
		if upTo.IsZero() || !at.After(upTo) {
			out = append(out, l)
			delete(u.leases, l)
		}
	}
	slices.Sort(out)
	u.lastUsed = now
	return out
}
