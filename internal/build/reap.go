package build

import (
	"context"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/internal/ticker"
)

// The health timeout measures silence the server could observe. A client
// build is canceled when its client has not reported health (nor been
// seen talking to its builder, Config.Active) for HealthTimeout of the
// server's own watching: time before the server started, or while it was
// stopped (SIGSTOP, a suspended machine), does not count, because clients
// could not reach it then. Run notices such a gap (internal/ticker) and
// starts the count afresh from the resume.

// ReapAbandoned cancels running client builds whose client has been silent
// for the health timeout, releasing their builders. Silence counts from
// the latest of the build's last health report, the last time its client
// was seen talking to its builder, and when the server began watching
// (observedFrom). A build whose client is talking to its builder right now
// is never canceled.
func (s *Service) ReapAbandoned(ctx context.Context) error {
	running, err := s.store.ListBuildsByStatus(ctx, Running)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, b := range running {
		if b.IsSource() {
			// kiln's own runner ends source builds (internal/runner).
			continue
		}
		if !b.Until.IsZero() && !now.Before(b.Until) {
			// Nothing a CI job obtains outlives its token (life.go).
			if _, err := s.end(ctx, b.ID, Result{Status: Canceled, Error: jobExpired(b).Error()}); err != nil {
				return err
			}
			continue
		}
		if s.cfg.Active(b.ID) {
			s.mu.Lock()
			s.activeAt[b.ID] = now
			s.mu.Unlock()
			s.seenActive(ctx, b, now)
			continue
		}
		s.mu.Lock()
		last := latest(b.LastHealthAt, s.observedFrom, s.activeAt[b.ID])
		s.mu.Unlock()
		if now.Sub(last) < s.cfg.HealthTimeout {
			continue
		}
		msg := fmt.Sprintf("no health report from the client for %s (it exited or lost its connection to kiln); build canceled", s.cfg.HealthTimeout)
		if _, err := s.end(ctx, b.ID, Result{Status: Canceled, Error: msg}); err != nil {
			return err
		}
		s.logger.Warn("abandoned build canceled", "build_id", b.ID, "project_id", b.ProjectID, "silent_for", now.Sub(last).Round(time.Second))
	}
	return nil
}

// seenActive writes that build b's client was seen talking to this
// replica's gateway at now as its LastHealthAt, so that the reapers of
// the other replicas, whose gateways do not see it, count its silence
// from then too. At most every HealthTimeout/4 per build: the store is
// written far less often than the reaper runs, and a build stays well
// inside its timeout.
func (s *Service) seenActive(ctx context.Context, b Build, now time.Time) {
	if now.Sub(b.LastHealthAt) < s.cfg.HealthTimeout/4 {
		return
	}
	if err := s.touch(ctx, b.ID, ""); err != nil && ctx.Err() == nil {
		// It ended meanwhile (touch refuses), or the store failed: this
		// replica's own reaper still counts from activeAt.
		s.logger.Debug("record a build's activity", "build_id", b.ID, "err", err)
	}
}

// reaperLock is the store lock under which one replica at a time reaps.
const reaperLock = "build-health-reaper"

// reapTick is one round of the health reaper. With several replicas, the
// one that gets reaperLock reaps; the others only record what their
// gateways see (recordActive), for it to count.
func (s *Service) reapTick(ctx context.Context) error {
	if s.cfg.Cluster == nil {
		return s.ReapAbandoned(ctx)
	}
	ran, err := s.cfg.Cluster.Exclusive(ctx, reaperLock, s.ReapAbandoned)
	if ran || err != nil {
		return err
	}
	return s.recordActive(ctx)
}

// recordActive notes the running client builds whose clients this
// replica's gateway sees at work (seenActive), without reaping.
func (s *Service) recordActive(ctx context.Context) error {
	running, err := s.store.ListBuildsByStatus(ctx, Running)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, b := range running {
		if b.IsSource() || !s.cfg.Active(b.ID) {
			continue
		}
		s.mu.Lock()
		s.activeAt[b.ID] = now
		s.mu.Unlock()
		s.seenActive(ctx, b, now)
	}
	return nil
}

// Run reaps abandoned builds, writes builder usage (resources.go), and
// releases the leases of builds that ended through another replica
// (replicas.go), until ctx ends. The reaper's interval follows the
// timeout so a short test timeout is honoured promptly.
func (s *Service) Run(ctx context.Context) {
	wrote := make(chan struct{})
	go func() { s.writeResources(ctx); close(wrote) }()
	defer func() { <-wrote }() // its last batch is written before Run returns
	followed := make(chan struct{})
	go func() { s.followLeases(ctx); close(followed) }()
	defer func() { <-followed }()
	every := max(min(s.cfg.HealthTimeout/4, 15*time.Second), 100*time.Millisecond)
	ticker.Run(ctx.Done(), every, func(now time.Time, paused time.Duration) {
		if paused > 0 {
			s.resumed(now, paused)
		}
		if err := s.reapTick(ctx); err != nil && ctx.Err() == nil {
			s.logger.Error("reap abandoned builds", "err", err)
		}
	})
}

// resumed starts the health timeout afresh at now: the server did not run
// for gap, so no client could report to it.
func (s *Service) resumed(now time.Time, gap time.Duration) {
	s.mu.Lock()
	s.observedFrom = now
	s.mu.Unlock()
	s.logger.Warn("kiln serve did not run for a while (stopped or suspended); running builds get a full health timeout from now",
		"gap", gap.Round(time.Millisecond), "health_timeout", s.cfg.HealthTimeout)
}

// latest is the latest of ts.
func latest(ts ...time.Time) time.Time {
	var l time.Time
	for _, t := range ts {
		if t.After(l) {
			l = t
		}
	}
	return l
}
