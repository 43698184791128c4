package registry

import (
	"hash/maphash"
	"sync"
	"time"
)

// pins protect what clients are using from the garbage collector.
//
// Every request touches the keys of what it names before distribution
// serves it: the blob or manifest digests it reads, mounts, commits or
// references (a manifest PUT touches every digest in the manifest), the tag
// it pushes, the upload session it writes. The collector deletes a key's
// object only through ifIdle, which holds the key's lock while it
// checks the last touch and deletes. So for any object, either the
// collector deleted it before a request touched it (the request then finds
// it missing and says so: the client uploads it again), or the request
// touched it first and the collector leaves it alone for the grace period.
// A push that finishes within the grace period of its last use of each
// object can therefore never reference something the collector removed.
//
// Keys: "d:<digest>", "t:<repo>:<tag>", "u:<repo>:<upload id>".
type pins struct {
	// now is the registry's clock (Config.Now).
	now     func() time.Time
	seed    maphash.Seed
	stripes [64]pinStripe
}

type pinStripe struct {
	mu     sync.Mutex
	last   map[string]time.Time
	active map[string]int // requests in flight on the key
}

func newPins(now func() time.Time) *pins {
	p := &pins{now: now, seed: maphash.MakeSeed()}
	for i := range p.stripes {
		p.stripes[i].last = map[string]time.Time{}
		p.stripes[i].active = map[string]int{}
	}
	return p
}

func (p *pins) stripe(key string) *pinStripe {
	return &p.stripes[maphash.String(p.seed, key)%uint64(len(p.stripes))]
}

// touch records a use of each key now.
func (p *pins) touch(keys ...string) {
	now := p.now()
	for _, k := range keys {
		s := p.stripe(k)
		s.mu.Lock()
		s.last[k] = now
		s.mu.Unlock()
	}
}

// begin touches keys and marks them in use until the returned func runs
// (which touches them again): a long upload request stays protected
// however long it streams.
func (p *pins) begin(keys ...string) (end func()) {
	for _, k := range keys {
		s := p.stripe(k)
		s.mu.Lock()
		s.last[k] = p.now()
		s.active[k]++
		s.mu.Unlock()
	}
	return func() {
		for _, k := range keys {
			s := p.stripe(k)
			s.mu.Lock()
			s.last[k] = p.now()
			if s.active[k]--; s.active[k] <= 0 {
				delete(s.active, k)
			}
			s.mu.Unlock()
		}
	}
}

// ifIdle runs fn (a deletion, or a write that must not undo a request's)
// with key's lock held, unless the key is in use or was touched within
// grace. It reports whether fn ran.
func (p *pins) ifIdle(key string, grace time.Duration, fn func() error) (bool, error) {
	s := p.stripe(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[key] > 0 || p.now().Sub(s.last[key]) < grace {
		return false, nil
	}
	return true, fn()
}

// idle reports whether key is unused and untouched for grace (a hint: only
// ifIdle decides).
func (p *pins) idle(key string, grace time.Duration) bool {
	s := p.stripe(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[key] == 0 && p.now().Sub(s.last[key]) >= grace
}

// prune forgets touches older than grace (they protect nothing any more).
func (p *pins) prune(grace time.Duration) {
	now := p.now()
	for i := range p.stripes {
		s := &p.stripes[i]
		s.mu.Lock()
		for k, t := range s.last {
			if now.Sub(t) >= grace && s.active[k] == 0 {
				delete(s.last, k)
			}
		}
		s.mu.Unlock()
	}
}

func digestKey(d string) string        { return "d:" + d }
func tagKey(repo, tag string) string   { return "t:" + repo + ":" + tag }
func uploadKey(repo, id string) string { return "u:" + repo + ":" + id }
