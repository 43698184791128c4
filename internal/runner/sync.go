package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// The store is the queue that replicas share; this file keeps a runner's
// copy of it and of its running builds in step with it.

// syncLoop syncs every SyncInterval, and when woken, until ctx ends.
func (r *Runner) syncLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		if err := r.sync(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("read the source build queue from the store; trying again", "in", r.cfg.SyncInterval, "err", err)
		}
	}
}

// kick asks the sync loop for a sync now.
func (r *Runner) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// sync reads the store's queued and running source builds and brings the
// runner in step: the queue becomes the store's (builds created through
// other replicas join it; builds another replica claimed, or that were
// canceled, leave it), projects' builds running elsewhere are counted for
// fair order, and a build running here that the store says ended or runs
// elsewhere has its solve stopped. Then it starts what may start.
func (r *Runner) sync(ctx context.Context) error {
	read := time.Now()
	var waiting, active []build.Build
	for _, status := range []build.Status{build.Queued, build.Running, build.Pushing} {
		bs, err := r.store.ListBuildsByStatus(ctx, status)
		if err != nil {
			return err
		}
		for _, b := range bs {
			switch {
			case !b.IsSource():
			case status == build.Queued:
				waiting = append(waiting, b)
			default:
				active = append(active, b)
			}
		}
	}
	inStore := make(map[string]bool, len(waiting))
	for _, b := range waiting {
		inStore[b.ID] = true
	}
	mine := map[string]bool{} // running here, as the store says
	r.mu.Lock()
	for pid, q := range r.queues {
		// An entry added after the read began may be newer than it.
		kept := q[:0]
		for _, e := range q {
			if inStore[e.id] || e.added.After(read) {
				kept = append(kept, e)
			}
		}
		if len(kept) == 0 {
			delete(r.queues, pid)
		} else {
			r.queues[pid] = kept
		}
	}
	for _, b := range waiting {
		if _, ok := r.running[b.ID]; !ok {
			r.insertLocked(b.ProjectID, queued{id: b.ID, created: b.CreatedAt, added: read})
		}
	}
	clear(r.elsewhere)
	for _, b := range active {
		if _, ok := r.running[b.ID]; ok && b.Replica == r.self {
			mine[b.ID] = true
			continue
		}
		r.elsewhere[b.ProjectID]++
	}
	clear(r.held)
	// Claimed jobs the read did not find running here: look again (the
	// claim may be newer than the read) and stop those that ended or
	// were taken over.
	var check []string
	for id, j := range r.running {
		if j.claimed && !mine[id] {
			check = append(check, id)
		}
	}
	r.mu.Unlock()
	for _, id := range check {
		b, err := r.store.GetBuild(ctx, id)
		if err != nil {
			r.log.Warn("check a running source build in the store", "build_id", id, "err", err)
			continue
		}
		var cause error
		switch {
		case b.Status == build.Canceled:
			cause = errCanceled
		case b.Terminal():
			cause = errEnded
		case b.Status == build.Queued || b.Replica != r.self:
			cause = errTakenOver
		default:
			continue
		}
		r.mu.Lock()
		if j, ok := r.running[id]; ok {
			j.cancel(cause)
		}
		r.mu.Unlock()
		r.log.Info("source build stopped here: the store has it ended or on another replica",
			"build_id", id, "project_id", b.ProjectID, "status", b.Status, "replica", b.Replica)
	}
	r.dispatch()
	return nil
}

// claim takes a queued build for this replica (build.Service.StartSource).
// With replicas, a project's claims take turns under a store lock, and a
// claim that would exceed MaxPerProject counted over all replicas is put
// off: later is true then, and when another replica holds the project's
// lock (it is claiming one of its builds); the build stays queued.
func (r *Runner) claim(ctx context.Context, id, projectID string) (b build.Build, ok, later bool, err error) {
	if r.cfg.Cluster == nil {
		b, ok, err = r.builds.StartSource(ctx, id, r.self)
		return b, ok, false, err
	}
	// One claim at a time here: on Postgres each holds a connection for
	// its lock while it queries on another, and the pool is bounded.
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	ran, err := r.cfg.Cluster.Exclusive(ctx, "source-claim/"+projectID, func(ctx context.Context) error {
		n, err := r.activeIn(ctx, projectID)
		if err != nil {
			return err
		}
		if n >= r.cfg.MaxPerProject {
			later = true
			return nil
		}
		b, ok, err = r.builds.StartSource(ctx, id, r.self)
		return err
	})
	if err == nil && !ran {
		later = true
	}
	return b, ok, later, err
}

// activeIn counts the project's source builds running or pushing on any
// replica.
func (r *Runner) activeIn(ctx context.Context, projectID string) (int, error) {
	n := 0
	for _, status := range []build.Status{build.Running, build.Pushing} {
		bs, err := r.store.ListBuildsByStatus(ctx, status)
		if err != nil {
			return 0, err
		}
		for _, b := range bs {
			if b.IsSource() && b.ProjectID == projectID {
				n++
			}
		}
	}
	return n, nil
}

// SettleDead queues again the source builds replica was running when it
// stopped beating, so live replicas run them from the start: register it
// with cluster.OnDead. A replica is dead after the cluster's timeout (15 s
// by default) and settled at the next beat of the replica that reaps it
// (2 s), so its builds are queued again within about 17 s of its last
// beat, and started within a SyncInterval more where there is room. A
// build that was queued again once already and whose replica died under
// it again fails instead (it may be what kills them), saying to rebuild.
// If the dead replica was only cut off and still runs a build, its sync
// stops that run once it reads the store again, and its end is not
// recorded (build.Outcome.Replica).
func (r *Runner) SettleDead(ctx context.Context, replica string) error {
	var errs []error
	for _, status := range []build.Status{build.Running, build.Pushing} {
		bs, err := r.store.ListBuildsByStatus(ctx, status)
		if err != nil {
			return err
		}
		for _, b := range bs {
			if !b.IsSource() || b.Replica != replica {
				continue
			}
			if b.Error != "" {
				// Its requeue note: it was restarted once already.
				msg := fmt.Sprintf("failed: replica %s stopped while this build was %s, after it had been restarted once already (%s); it may be what stops replicas: read its log, then start it again with RebuildBuild",
					replica, b.Status, b.Error)
				_, err := r.builds.FinishSource(ctx, b.ID, build.Outcome{Result: build.Result{Status: build.Failed, Error: msg}})
				errs = append(errs, err)
				r.hub.notify(b.ID)
				continue
			}
			note := fmt.Sprintf("restarted: replica %s stopped while this build was %s (started %s); it was queued again to run from the start on a live replica",
				replica, b.Status, b.StartedAt.UTC().Format(time.RFC3339))
			if _, _, err := r.builds.RequeueSource(ctx, b.ID, replica, note); err != nil {
				errs = append(errs, fmt.Errorf("queue build %s again: %w", b.ID, err))
				continue
			}
			r.hub.notify(b.ID)
		}
	}
	r.kick()
	return errors.Join(errs...)
}
