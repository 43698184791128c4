// Package cluster lets several `kiln serve` replicas share one database.
// Each replica announces itself in the store and beats every Interval; one
// whose beat is older than Timeout is dead, and the survivors settle what
// it held (its builds fail or are taken over: OnDead) within Timeout plus
// an Interval. Work that must run on one replica at a time (registry GC,
// retention sweeps, the dead-replica reaper) runs under a store lock
// (Exclusive), and key material every replica needs (the CA, the registry
// token key) is kept in the store sealed with the operator's cluster key
// (Secret).
//
// A single replica (SQLite, or Postgres without a cluster key) runs the
// same code: it beats, is never dead to itself, and its secrets stay in
// its data directory where they always were (Shared is false).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// Replica is one `kiln serve` process sharing the database.
type Replica struct {
	ID string
	// APIURL is where other replicas reach its API (internal calls);
	// GatewayAddr is its builder gateway's host:port clients dial.
	APIURL      string
	GatewayAddr string
	StartedAt   time.Time
	// HeartbeatAt is its last beat and Age how long before the listing
	// that was, both by the database's clock: replicas' own clocks may
	// differ, so liveness is never judged by comparing them.
	HeartbeatAt time.Time
	Age         time.Duration
}

// Store is what the cluster keeps in the database (internal/store).
type Store interface {
	// Heartbeat records r as alive now (HeartbeatAt, by the database's
	// clock), adding it if new.
	Heartbeat(ctx context.Context, r Replica) error
	// ListReplicas lists the replicas with their Age.
	ListReplicas(ctx context.Context) ([]Replica, error)
	// RemoveReplica forgets a replica: one that stopped (staleFor 0), or
	// one reaped, only if it is still silent for staleFor (it may have
	// come back meanwhile).
	RemoveReplica(ctx context.Context, id string, staleFor time.Duration) error
	// PlaceBuilder returns the replica that runs the project's builder for
	// platform: the one recorded if it beat less than timeout ago, else
	// replica, recorded as its new place.
	PlaceBuilder(ctx context.Context, projectID, platform, replica string, timeout time.Duration) (string, error)
	// PutSecretIfAbsent stores value under name unless a value is already
	// there, and returns the stored one: the first replica's wins.
	PutSecretIfAbsent(ctx context.Context, name, value string) (string, error)
	// TryLock takes the named lock if no other holder has it; ok is false
	// when another one does. held is ctx, canceled if the lock is lost
	// before unlock gives it back.
	TryLock(ctx context.Context, name string) (held context.Context, unlock func(), ok bool, err error)
}

// Defaults.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = 15 * time.Second
)

// Config configures a replica's membership.
type Config struct {
	Self Replica // ID, APIURL, GatewayAddr
	// Interval is how often it beats; Timeout how long a silent replica
	// lives on. [DefaultInterval, DefaultTimeout]
	Interval, Timeout time.Duration
	// Key seals shared secrets (LoadKey); nil for a single replica.
	Key    []byte
	Logger *slog.Logger
}

// Cluster is this replica's membership.
type Cluster struct {
	store Store
	cfg   Config
	log   *slog.Logger

	mu       sync.Mutex
	members  map[string]Replica // as last listed
	listedAt time.Time          // when (this process's monotonic clock)
	// lastBeat is this replica's last successful beat; healthySince the
	// start of its current run of them.
	lastBeat, healthySince time.Time
	onDead                 []func(ctx context.Context, replica string) error
	reaping                atomic.Bool // a reap runs (its own goroutine)
	reaps                  sync.WaitGroup
}

// New returns the membership of replica cfg.Self in st's cluster; Start
// announces it.
func New(st Store, cfg Config) (*Cluster, error) {
	if cfg.Self.ID == "" {
		return nil, errors.New("cluster: the replica has no id")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 2*cfg.Interval {
		return nil, fmt.Errorf("cluster: the replica timeout %s must be at least twice the heartbeat interval %s", cfg.Timeout, cfg.Interval)
	}
	if cfg.Key != nil && len(cfg.Key) != keySize {
		return nil, fmt.Errorf("cluster: the key must be %d bytes", keySize)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Cluster{store: st, cfg: cfg, log: cfg.Logger, members: map[string]Replica{}}, nil
}

// Self is this replica's id.
func (c *Cluster) Self() string { return c.cfg.Self.ID }

// Shared reports whether replicas share key material through the store
// (a cluster key was given): with several replicas it must be.
func (c *Cluster) Shared() bool { return c.cfg.Key != nil }

// Timeout is how long a silent replica lives on.
func (c *Cluster) Timeout() time.Duration { return c.cfg.Timeout }

// OnDead registers fn, called (on one replica, under the reaper's lock)
// for each replica found dead, before it is forgotten: fail or take over
// its builds there. A replica is forgotten once every fn returned nil for
// it; until then the next beat tries again. Register before Run.
func (c *Cluster) OnDead(fn func(ctx context.Context, replica string) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDead = append(c.onDead, fn)
}

// Start announces this replica (its first beat) at its API URL and
// gateway address, and reads the others.
func (c *Cluster) Start(ctx context.Context, apiURL, gatewayAddr string) error {
	self := c.cfg.Self
	self.APIURL, self.GatewayAddr, self.StartedAt = apiURL, gatewayAddr, time.Now().UTC()
	c.cfg.Self = self
	if err := c.beat(ctx); err != nil {
		return fmt.Errorf("announce replica %s: %w", self.ID, err)
	}
	for _, r := range c.Peers() {
		if r.APIURL == apiURL {
			return fmt.Errorf("replica %s advertises %s too; give each replica its own --advertise-url: %w", r.ID, apiURL, errdefs.ErrInvalid)
		}
	}
	return nil
}

// beat records this replica alive and refreshes the member list; it gives
// up after an Interval (a database that does not answer is a failed beat,
// not a stalled one).
func (c *Cluster) beat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Interval)
	defer cancel()
	if err := c.store.Heartbeat(ctx, c.cfg.Self); err != nil {
		return err
	}
	now := time.Now()
	if err := c.list(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	if now.Sub(c.lastBeat) > 2*c.cfg.Interval {
		// The first beat, or the first after missed ones: the others may
		// have missed theirs too, so this replica judges nobody until it
		// has beaten for a whole timeout (reap).
		c.healthySince = now
	}
	c.lastBeat = now
	c.mu.Unlock()
	return nil
}

// list refreshes the member list.
func (c *Cluster) list(ctx context.Context) error {
	rs, err := c.store.ListReplicas(ctx)
	if err != nil {
		return err
	}
	m := make(map[string]Replica, len(rs))
	for _, r := range rs {
		m[r.ID] = r
	}
	c.mu.Lock()
	c.members, c.listedAt = m, time.Now()
	c.mu.Unlock()
	return nil
}

// Fenced reports whether this replica has not beaten for so long that the
// others may take it for dead (and take its work over): it must start no
// new work until it beats again.
func (c *Cluster) Fenced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Since(c.lastBeat) > c.cfg.Timeout-c.cfg.Interval
}

// Run beats every Interval and reaps dead replicas until ctx ends, then
// removes this replica from the store (a clean stop is not a death).
func (c *Cluster) Run(ctx context.Context) {
	failing := false // said once, not every beat
	ticker.Run(ctx.Done(), c.cfg.Interval, func(time.Time, time.Duration) {
		if err := c.beat(ctx); err != nil {
			if !failing && ctx.Err() == nil {
				c.log.Warn("replica heartbeat failed; other replicas take this one for dead after the timeout", "replica", c.Self(), "timeout", c.cfg.Timeout, "err", err)
			}
			failing = true
			return
		}
		if failing {
			c.log.Info("replica heartbeat recovered", "replica", c.Self())
			failing = false
		}
		// Reaping may take long (many builds, a slow database): never
		// in the way of this replica's own beat.
		if c.reaping.CompareAndSwap(false, true) {
			c.reaps.Add(1)
			go func() {
				defer c.reaps.Done()
				defer c.reaping.Store(false)
				c.reap(ctx)
			}()
		}
	})
	c.reaps.Wait()
	stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.store.RemoveReplica(stop, c.Self(), 0); err != nil {
		c.log.Warn("remove replica record at stop", "replica", c.Self(), "err", err)
	}
}

// silentFor is how long a listed replica has not beaten: its age at the
// listing (the database's clock) plus the time since (this process's).
// Call with mu held.
func (c *Cluster) silentFor(r Replica) time.Duration { return r.Age + time.Since(c.listedAt) }

// Alive reports whether replica id beat within the timeout (as of the last
// listing). This replica is always alive to itself.
func (c *Cluster) Alive(id string) bool {
	_, ok := c.Member(id)
	return ok
}

// Member returns a live replica's record.
func (c *Cluster) Member(id string) (Replica, bool) {
	if id == c.Self() {
		return c.cfg.Self, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.members[id]
	if !ok || c.silentFor(r) >= c.cfg.Timeout {
		return Replica{}, false
	}
	return r, true
}

// PlaceBuilder returns the live replica that runs (or will run) the
// project's builder for platform; this one if none does.
func (c *Cluster) PlaceBuilder(ctx context.Context, projectID, platform string) (string, error) {
	return c.store.PlaceBuilder(ctx, projectID, platform, c.Self(), c.cfg.Timeout)
}

// reap settles the replicas that stopped beating, on one replica at a
// time: the OnDead hooks run for each, then it is forgotten. A replica
// judges others only once it has itself beaten for a whole timeout: after
// the database was out of reach, every replica's beat is old, and the
// first one back must not take the others, alive, for dead.
func (c *Cluster) reap(ctx context.Context) {
	c.mu.Lock()
	judged := time.Since(c.healthySince) >= c.cfg.Timeout
	stale := len(c.dead()) > 0
	hooks := c.onDead
	c.mu.Unlock()
	if !judged || !stale {
		return
	}
	_, err := c.Exclusive(ctx, "replica-reaper", func(ctx context.Context) error {
		// Listed again under the lock: one that beat again meanwhile is
		// not dead.
		if err := c.list(ctx); err != nil {
			return err
		}
		c.mu.Lock()
		dead := c.dead()
		c.mu.Unlock()
		var errs []error
		for _, id := range dead {
			c.log.Warn("replica stopped beating; settling what it held", "replica", id, "timeout", c.cfg.Timeout)
			var failed []error
			for _, fn := range hooks {
				if err := fn(ctx, id); err != nil {
					failed = append(failed, err)
				}
			}
			if len(failed) == 0 {
				failed = append(failed, c.store.RemoveReplica(ctx, id, c.cfg.Timeout))
			}
			errs = append(errs, failed...)
		}
		return errors.Join(errs...)
	})
	if err != nil && ctx.Err() == nil {
		c.log.Error("reap dead replicas", "err", err)
	}
}

// dead lists the other replicas silent for the timeout. Call with mu held.
func (c *Cluster) dead() []string {
	var out []string
	for id, r := range c.members {
		if id != c.Self() && c.silentFor(r) >= c.cfg.Timeout {
			out = append(out, id)
		}
	}
	return out
}

// Exclusive runs fn while this replica holds the named lock, and reports
// false without running it when another replica holds it (its turn: the
// work is being done there). fn's context is canceled if the lock is lost
// (the store connection holding it broke): fn must stop then.
func (c *Cluster) Exclusive(ctx context.Context, name string, fn func(ctx context.Context) error) (ran bool, err error) {
	held, unlock, ok, err := c.store.TryLock(ctx, name)
	if err != nil || !ok {
		return false, err
	}
	defer unlock()
	return true, fn(held)
}
