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
	"time"

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
	HeartbeatAt time.Time
}

// Store is what the cluster keeps in the database (internal/store).
type Store interface {
	// Heartbeat records r as alive now (HeartbeatAt), adding it if new.
	Heartbeat(ctx context.Context, r Replica) error
	ListReplicas(ctx context.Context) ([]Replica, error)
	// RemoveReplica forgets a replica (it stopped, or it was reaped).
	RemoveReplica(ctx context.Context, id string) error
	// PlaceBuilder returns the replica that runs the project's builder for
	// platform: the one recorded if it beat at or after aliveSince, else
	// replica, recorded as its new place.
	PlaceBuilder(ctx context.Context, projectID, platform, replica string, aliveSince time.Time) (string, error)
	// PutSecretIfAbsent stores value under name unless a value is already
	// there, and returns the stored one: the first replica's wins.
	PutSecretIfAbsent(ctx context.Context, name, value string) (string, error)
	// TryLock takes the named lock if no other holder has it; ok is false
	// when another one does. unlock gives it back.
	TryLock(ctx context.Context, name string) (unlock func(), ok bool, err error)
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

	mu      sync.Mutex
	members map[string]Replica // as last listed
	onDead  []func(ctx context.Context, replica string) error
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
	return nil
}

// beat records this replica alive and refreshes the member list.
func (c *Cluster) beat(ctx context.Context) error {
	if err := c.store.Heartbeat(ctx, c.cfg.Self); err != nil {
		return err
	}
	rs, err := c.store.ListReplicas(ctx)
	if err != nil {
		return err
	}
	m := make(map[string]Replica, len(rs))
	for _, r := range rs {
		m[r.ID] = r
	}
	c.mu.Lock()
	c.members = m
	c.mu.Unlock()
	return nil
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
		c.reap(ctx)
	})
	stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := c.store.RemoveReplica(stop, c.Self()); err != nil {
		c.log.Warn("remove replica record at stop", "replica", c.Self(), "err", err)
	}
}

// aliveSince is the oldest beat of a live replica.
func (c *Cluster) aliveSince() time.Time { return time.Now().Add(-c.cfg.Timeout) }

// Alive reports whether replica id beat within the timeout (as of the last
// listing). This replica is always alive to itself.
func (c *Cluster) Alive(id string) bool {
	if id == c.Self() {
		return true
	}
	c.mu.Lock()
	r, ok := c.members[id]
	c.mu.Unlock()
	return ok && r.HeartbeatAt.After(c.aliveSince())
}

// Member returns a live replica's record.
func (c *Cluster) Member(id string) (Replica, bool) {
	if id == c.Self() {
		return c.cfg.Self, true
	}
	c.mu.Lock()
	r, ok := c.members[id]
	c.mu.Unlock()
	if !ok || !r.HeartbeatAt.After(c.aliveSince()) {
		return Replica{}, false
	}
	return r, true
}

// PlaceBuilder returns the live replica that runs (or will run) the
// project's builder for platform; this one if none does.
func (c *Cluster) PlaceBuilder(ctx context.Context, projectID, platform string) (string, error) {
	return c.store.PlaceBuilder(ctx, projectID, platform, c.Self(), c.aliveSince())
}

// reap settles the replicas that stopped beating, on one replica at a
// time: the OnDead hooks run for each, then it is forgotten.
func (c *Cluster) reap(ctx context.Context) {
	c.mu.Lock()
	var dead []string
	for id, r := range c.members {
		if id != c.Self() && !r.HeartbeatAt.After(c.aliveSince()) {
			dead = append(dead, id)
		}
	}
	hooks := c.onDead
	c.mu.Unlock()
	if len(dead) == 0 {
		return
	}
	_, err := c.Exclusive(ctx, "replica-reaper", func(ctx context.Context) error {
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
				failed = append(failed, c.store.RemoveReplica(ctx, id))
			}
			errs = append(errs, failed...)
		}
		return errors.Join(errs...)
	})
	if err != nil && ctx.Err() == nil {
		c.log.Error("reap dead replicas", "err", err)
	}
}

// Exclusive runs fn while this replica holds the named lock, and reports
// false without running it when another replica holds it (its turn: the
// work is being done there).
func (c *Cluster) Exclusive(ctx context.Context, name string, fn func(ctx context.Context) error) (ran bool, err error) {
	unlock, ok, err := c.store.TryLock(ctx, name)
	if err != nil || !ok {
		return false, err
	}
	defer unlock()
	return true, fn(ctx)
}
