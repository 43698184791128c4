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
	var orphans []build.Build
	for _, b := range active {
		_, ok := r.running[b.ID]
		if ok && b.Replica == r.self {
			mine[b.ID] = true
			continue
		}
		if !ok && b.Replica == r.self && (r.self != "" || r.cfg.Cluster == nil) {
			orphans = append(orphans, b)
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
	for _, b := range orphans {
		if err := r.settleOrphan(ctx, b); err != nil {
			r.log.Warn("settle a source build this replica lost track of; trying again at the next sync", "build_id", b.ID, "err", err)
		}
	}
	r.dispatch()
	return nil
}

// settleOrphan settles source build b, which the store has running on this
// replica though no job here runs it: its end could not be recorded
// (FinishSource failed), or its claim was, but the answer was lost. Left
// alone it would never end, and would hold one of its project's
// MaxPerProject forever. It is queued again to run from the start, or
// fails if it was queued again once already (requeueOrFail). A build being
// claimed here right now is left alone: claims hold claimMu, and a job
// stays in r.running from before its claim to after its end is recorded.
func (r *Runner) settleOrphan(ctx context.Context, b build.Build) error {
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	r.mu.Lock()
	_, running := r.running[b.ID]
	r.mu.Unlock()
	if running {
		return nil // claimed again here since the sync's read
	}
	where := "this replica"
	if r.self != "" {
		where = "replica " + r.self
	}
	note := fmt.Sprintf("restarted: %s lost track of this build while it was %s (started %s: its end or its start could not be recorded); it was queued again to run from the start",
		where, b.Status, b.StartedAt.UTC().Format(time.RFC3339))
	fail := fmt.Sprintf("failed: %s lost track of this build while it was %s, after it had been restarted once already (%s); read its log, then start it again with RebuildBuild",
		where, b.Status, b.Error)
	settled, err := r.requeueOrFail(ctx, b, r.self, note, fail)
	if settled {
		r.log.Warn("source build settled: no job on this replica ran it", "build_id", b.ID, "project_id", b.ProjectID, "status", b.Status)
	}
	return err
}

// requeueOrFail queues source build b again with note (recorded as its
// error while it waits, and in its log), or fails it with fail if it was
// queued again once already (its error is that note): a build lost twice
// may be what loses them. Either only while the build still runs on
// replica, as the store says at that moment; settled is false when it
// did not.
func (r *Runner) requeueOrFail(ctx context.Context, b build.Build, replica, note, fail string) (settled bool, err error) {
	if b.Error != "" {
		got, err := r.builds.FinishSource(ctx, b.ID, build.Outcome{Result: build.Result{Status: build.Failed, Error: fail}, Replica: replica})
		if err != nil {
			return false, fmt.Errorf("fail build %s: %w", b.ID, err)
		}
		r.hub.notify(b.ID)
		return got.Status == build.Failed && got.Error == fail, nil
	}
	_, ok, err := r.builds.RequeueSource(ctx, b.ID, replica, note)
	if err != nil {
		return false, fmt.Errorf("queue build %s again: %w", b.ID, err)
	}
	if ok {
		r.hub.notify(b.ID)
	}
	return ok, nil
}

// claim takes a queued build for this replica (build.Service.StartSource).
// With replicas, a project's claims take turns under a store lock, and a
// claim that would exceed MaxPerProject counted over all replicas is put
// off: later is true then, and when another replica holds the project's
// lock (it is claiming one of its builds); the build stays queued.
func (r *Runner) claim(ctx context.Context, id, projectID string) (b build.Build, ok, later bool, err error) {
	// One claim at a time here: on Postgres each holds a connection for
	// its lock while it queries on another, and the pool is bounded; and
	// settleOrphan must not see a build between its claim and its job.
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	if r.cfg.Cluster == nil {
		b, ok, err = r.builds.StartSource(ctx, id, r.self)
		return b, ok, false, err
	}
	if r.fenced() {
		return build.Build{}, false, true, nil // fenced since its dispatch
	}
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
			note := fmt.Sprintf("restarted: replica %s stopped while this build was %s (started %s); it was queued again to run from the start on a live replica",
				replica, b.Status, b.StartedAt.UTC().Format(time.RFC3339))
			fail := fmt.Sprintf("failed: replica %s stopped while this build was %s, after it had been restarted once already (%s); it may be what stops replicas: read its log, then start it again with RebuildBuild",
				replica, b.Status, b.Error)
			if _, err := r.requeueOrFail(ctx, b, replica, note, fail); err != nil {
				errs = append(errs, err)
			}
		}
	}
	r.kick()
	return errors.Join(errs...)
}
