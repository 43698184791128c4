package build

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// RestartedError is the recorded error of a client build whose builder did
// not survive a restart of kiln serve.
const RestartedError = "the control plane restarted during the build and its builder did not survive; retry the build"

// Reconcile settles the client builds a previous run of kiln serve left
// running; call it at start, before the API serves. A build that held a
// builder lease the fleet no longer has (with builders that are kiln
// serve's children, none survives) cannot go on: its builder is gone, so it
// is failed at once with [RestartedError] instead of waiting out the health
// timeout. That failure is presumed, not observed: if the build's client
// still reports success (its solve ended before the builder died, and its
// FinishBuild is arriving late), Finish records the success instead.
//
// A build that never got a builder keeps running: its client may still be
// asking for one. Like every running build, its health timeout counts from
// this start (reap.go). A build it cannot settle (the store refused the
// write) is left to that timeout; the error names it.
func (s *Service) Reconcile(ctx context.Context) error {
	return s.failOrphans(ctx, RestartedError, "kiln serve restarted under it")
}

// StoppedError is the recorded error of a client build whose builder
// stopped with kiln serve.
const StoppedError = "the control plane stopped during the build and its builder stopped with it; retry the build"

// Stopped settles the client builds still running when kiln serve stops,
// after its builders have stopped: those that held a builder lease cannot
// go on and fail with [StoppedError] (presumed, as at Reconcile). Builds
// that never got a builder stay running for the next start.
func (s *Service) Stopped(ctx context.Context) error {
	return s.failOrphans(ctx, StoppedError, "kiln serve stopped under it")
}

// failOrphans fails the running client builds whose builder leases this
// replica held and its fleet no longer holds, with msg; why is for the
// log.
func (s *Service) failOrphans(ctx context.Context, msg, why string) error {
	running, err := s.store.ListBuildsByStatus(ctx, Running)
	if err != nil {
		return fmt.Errorf("list running builds: %w", err)
	}
	failed := 0
	var errs []error
	for _, b := range running {
		if b.IsSource() || b.Platforms == "" || !s.ours(b) || s.leaseSurvived(b) {
			// Kiln's runner settles source builds; a build that never got a
			// builder may still get one; another replica settles its own
			// builds (replicas.go); a surviving lease goes on.
			continue
		}
		s.mu.Lock()
		s.presumed[b.ID] = true
		s.mu.Unlock()
		if _, err := s.end(ctx, b.ID, Result{Status: Failed, Error: msg}); err != nil {
			// The others are still settled; this one ends at its health
			// timeout.
			errs = append(errs, fmt.Errorf("fail build %s: %w", b.ID, err))
			continue
		}
		failed++
		s.logger.WarnContext(ctx, "build failed: "+why, "build_id", b.ID, "project_id", b.ProjectID)
	}
	if failed > 0 {
		s.logger.InfoContext(ctx, "settled client builds that lost their builders", "failed", failed, "running", len(running)-failed)
	}
	return errors.Join(errs...)
}

// leaseSurvived reports whether the fleet still holds every lease build b
// had.
func (s *Service) leaseSurvived(b Build) bool {
	for _, pl := range strings.Split(b.Platforms, ",") {
		if pl != "" && !s.cfg.Leased(b.ProjectID, pl, b.ID) {
			return false
		}
	}
	return true
}
