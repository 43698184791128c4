package build

import (
	"context"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	kplatform "github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// Several kiln serve replicas may share the store (internal/cluster), each
// running its own builders, while a load balancer spreads one client's
// calls over them. A project's builder for a platform runs on the replica
// the cluster places it on; a build connected through another replica is
// connected there (Config.Owners, which calls that replica's
// ConnectHere), so its lease, its client certificate and the gateway its
// client dials are the owner's; a builder released early (Release) is
// released there too (ReleaseHere). The owner records itself as the
// build's Replica when it leases the builder (touch), and from then on:
//
//   - only the owner settles the build at its own start and stop
//     (Reconcile, Stopped): its builders are the ones that went away;
//   - if the owner dies, a surviving replica fails the build
//     (ReplicaDead, a cluster.OnDead hook);
//   - the build may end through any replica (FinishBuild, a cancel, the
//     health reaper): the owner notices in the store within
//     leaseFollowInterval and releases its lease (followLeases);
//   - the health reaper runs on one replica at a time, and the owner's
//     gateway seeing the client at work counts for it wherever it runs:
//     every replica writes what its gateway sees to LastHealthAt
//     (reap.go);
//   - the owner follows the build's solves, so a step report arriving at
//     another replica keeps only the client's own steps (followed).

// Cluster is what builds need of the replicas sharing the store
// (*cluster.Cluster implements it).
type Cluster interface {
	// Self is this replica's id.
	Self() string
	// Alive reports whether replica id beats.
	Alive(id string) bool
	// PlaceBuilder returns the live replica that runs (or will run) the
	// project's builder for platform.
	PlaceBuilder(ctx context.Context, projectID, platform string) (string, error)
	// Exclusive runs fn if this replica gets the named lock, and reports
	// whether it ran: work done on one replica at a time.
	Exclusive(ctx context.Context, name string, fn func(ctx context.Context) error) (bool, error)
}

// Owners asks the replica owner running a project's builder to act on it
// for a build (internal/server's peer calls). An owner it cannot reach is
// errdefs.ErrUnavailable, for the client to retry.
type Owners interface {
	// Connect is the owner's ConnectHere.
	Connect(ctx context.Context, owner, buildID, platform string) (Connection, error)
	// Release is the owner's ReleaseHere.
	Release(ctx context.Context, owner, buildID, platform string) error
}

// leaseFollowInterval is how often a replica looks up the builds it holds
// leases for, to release those that ended through another replica.
const leaseFollowInterval = time.Second

// DeadReplicaError is the recorded error of a client build whose builder's
// replica stopped beating.
const DeadReplicaError = "the kiln replica holding its builder (%s) stopped; retry the build"

// self is this replica's id; "" without a cluster.
func (s *Service) self() string {
	if s.cfg.Cluster == nil {
		return ""
	}
	return s.cfg.Cluster.Self()
}

// ours reports whether client build b's builder leases are this
// replica's: it says so, or it was recorded before replicas were (its
// Replica is "").
func (s *Service) ours(b Build) bool { return b.Replica == "" || b.Replica == s.self() }

// placeBuilder is the replica that runs the project's builder for
// platform: this one without a cluster or a way to reach the others.
func (s *Service) placeBuilder(ctx context.Context, projectID, platform string) (string, error) {
	if s.cfg.Cluster == nil || s.cfg.Owners == nil {
		return s.self(), nil
	}
	owner, err := s.cfg.Cluster.PlaceBuilder(ctx, projectID, platform)
	if err != nil {
		return "", fmt.Errorf("find the replica running the builder of project %s (%s): %v; retry: %w", projectID, platform, err, errdefs.ErrUnavailable)
	}
	return owner, nil
}

// ConnectHere connects running build buildID to this replica's builder for
// platform (the lease, the builder's start, the client certificate): what
// another replica asks of the one the builder is placed on. The caller
// authorized the build's client; this checks only that the build still
// runs.
func (s *Service) ConnectHere(ctx context.Context, buildID, platform string) (Connection, error) {
	b, err := s.store.GetBuild(ctx, buildID)
	if err != nil {
		return Connection{}, err
	}
	if b.Terminal() {
		return Connection{}, errEnded(b)
	}
	builder, err := kplatform.ParseBuilder(platform)
	if err != nil {
		return Connection{}, err
	}
	// The asker read the placement a moment ago; should it have moved
	// since (this replica was taken for dead), starting the builder here
	// would run two of it.
	owner, err := s.placeBuilder(ctx, b.ProjectID, builder.String())
	if err != nil {
		return Connection{}, err
	}
	if owner != s.self() {
		return Connection{}, fmt.Errorf("the builder of project %s (%s) is now on kiln replica %s, not this one; retry: %w",
			b.ProjectID, builder, owner, errdefs.ErrUnavailable)
	}
	return s.connectHere(ctx, b, builder.String())
}

// followed reports whether build b's solves are followed on its builder
// (Config.Followed): by this replica's follower, or by that of the live
// replica holding its builder, whose gateway its client talks to (and
// which follows every solve there as this one would).
func (s *Service) followed(b Build) bool {
	if s.cfg.Followed != nil && s.cfg.Followed(b.ID) {
		return true
	}
	return !s.ours(b) && s.cfg.Cluster != nil && s.cfg.Cluster.Alive(b.Replica)
}

// ReleaseHere gives back build buildID's lease of this replica's builder
// for platform early (Release asked through another replica); the build
// stays open.
func (s *Service) ReleaseHere(ctx context.Context, buildID, platform string) error {
	b, err := s.store.GetBuild(ctx, buildID)
	if err != nil {
		return err
	}
	builder, err := kplatform.ParseBuilder(platform)
	if err != nil {
		return err
	}
	s.releaseHere(b, builder.String())
	return nil
}

// ReplicaDead fails the running client builds whose builder leases were
// held by replica, which stopped beating: their builders went with it. It
// is a cluster.OnDead hook; an error leaves the replica to the next try.
func (s *Service) ReplicaDead(ctx context.Context, replica string) error {
	if replica == "" || replica == s.self() {
		return nil
	}
	running, err := s.store.ListBuildsByStatus(ctx, Running)
	if err != nil {
		return fmt.Errorf("list running builds: %w", err)
	}
	msg := fmt.Sprintf(DeadReplicaError, replica)
	for _, b := range running {
		if b.IsSource() || b.Replica != replica {
			continue
		}
		if _, err := s.end(ctx, b.ID, Result{Status: Failed, Error: msg}); err != nil {
			return fmt.Errorf("fail build %s: %w", b.ID, err)
		}
		s.logger.WarnContext(ctx, "build failed: the replica holding its builder stopped", "build_id", b.ID, "project_id", b.ProjectID, "replica", replica)
	}
	return nil
}

// releaseEnded releases the leases of the builds that ended, or were
// deleted with their project, since they leased a builder here: they may
// have ended through another replica.
func (s *Service) releaseEnded(ctx context.Context) {
	s.mu.Lock()
	ids := make([]string, 0, len(s.leases))
	for id := range s.leases {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		b, err := s.store.GetBuild(ctx, id)
		switch {
		case errdefs.IsNotFound(err):
			// Deleted with its project, whose builders were reset (and
			// their leases with them).
			s.cfg.Revoke(id)
			s.mu.Lock()
			delete(s.leases, id)
			delete(s.activeAt, id)
			s.mu.Unlock()
		case err != nil:
			if ctx.Err() == nil {
				s.logger.Warn("look up a leased build", "build_id", id, "err", err)
			}
			return // the store is down: try all of them again next time
		case b.Terminal():
			s.releaseAll(b)
		}
	}
}

// followLeases runs releaseEnded every leaseFollowInterval until ctx ends.
func (s *Service) followLeases(ctx context.Context) {
	ticker.Run(ctx.Done(), leaseFollowInterval, func(time.Time, time.Duration) { s.releaseEnded(ctx) })
}
