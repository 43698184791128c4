package build

import (
	"context"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// Source builds: kiln runs them itself from an uploaded context
// (internal/runner drives them). Their life is queued → running → pushing
// → succeeded | failed | canceled; every transition is written before the
// runner acts on it, and the first terminal status wins, so a cancel, a
// lost builder and the runner's own result can race safely. The one way
// back is RequeueSource, for a build whose replica died under it; while
// such a build waits and runs again, its Error is the note saying so (no
// other write sets the error of a source build that has not ended).

// NewID returns a fresh build id.
func NewID() string { return project.NewID() }

// CreateSource records a queued source build with id (from NewID) in proj
// for p. spec is the runner's description of the build (JSON), sealed its
// sealed secrets. A CI job's source build records the policies that
// admitted the job, and ends when one is removed (EndAdmittedBy); kiln
// runs it, so it is not cut at the job token's expiry.
func (s *Service) CreateSource(ctx context.Context, p auth.Principal, proj project.Project, id, spec, sealed string) (Build, error) {
	policies, err := s.admittedBy(ctx, p, proj.ID)
	if err != nil {
		return Build{}, err
	}
	b := Build{ID: id, ProjectID: proj.ID, OrgID: proj.OrgID, Status: Queued,
		Kind: KindSource, Spec: spec, Secrets: sealed, CreatedAt: time.Now().UTC(), PolicyIDs: policies}
	if err := s.store.CreateBuild(ctx, b); err != nil {
		return Build{}, err
	}
	s.logger.InfoContext(ctx, "source build queued", "build_id", b.ID, "project_id", proj.ID)
	s.cfg.Observer.BuildCreated(b)
	return b, nil
}

// StartSource claims a queued source build for replica (the runner's own,
// "" for a server without replicas) and moves it to running. The claim is
// one row-locked update: of several replicas that try, one wins; ok is
// false for the others, and when the build is no longer queued (it was
// canceled while it waited, or another replica runs it).
func (s *Service) StartSource(ctx context.Context, id, replica string) (b Build, ok bool, err error) {
	b, err = s.store.UpdateBuild(ctx, id, func(b *Build) error {
		now := time.Now().UTC()
		if b.Transition(Running, now) != nil {
			return nil // not queued: canceled while it waited, or claimed
		}
		ok, b.LastHealthAt, b.Replica = true, now, replica
		return nil
	})
	if ok && err == nil {
		s.cfg.Observer.BuildStarted(b)
	}
	return b, ok, err
}

// RequeueSource queues again a source build that replica was running when
// it died (internal/cluster's OnDead), so a live replica runs it from the
// start; note says why, recorded as the build's error while it waits and
// as a line of its log. ok is false, and nothing changes, unless the build
// is still running or pushing on replica: it ended, or it was taken over
// already.
func (s *Service) RequeueSource(ctx context.Context, id, replica, note string) (b Build, ok bool, err error) {
	b, err = s.store.UpdateBuild(ctx, id, func(b *Build) error {
		if !b.IsSource() || b.Replica != replica || b.Requeue() != nil {
			return nil
		}
		ok, b.Error = true, note
		return nil
	})
	if err != nil || !ok {
		return b, false, err
	}
	now := time.Now().UTC()
	step := Step{Digest: stepRequeue, Name: "[kiln] restarted on another replica", StartedAt: now, CompletedAt: now}
	if err := s.StoreSteps(ctx, id, []Step{step}, []LogLine{{Digest: stepRequeue, At: now, Message: note + "\n"}}); err != nil {
		// The build is queued again either way; its error says why.
		s.logger.WarnContext(ctx, "record a requeued source build's note", "build_id", id, "err", err)
	}
	s.logger.WarnContext(ctx, "source build queued again: its replica died", "build_id", id, "project_id", b.ProjectID, "replica", replica)
	return b, true, nil
}

// stepRequeue is the step a requeued build's note is logged under.
const stepRequeue = "kiln:requeue"

// SetPushing records that a running source build is exporting its image,
// if it still runs on replica (the runner's own): a run whose build was
// taken over changes nothing.
func (s *Service) SetPushing(ctx context.Context, id, replica string) error {
	_, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
		if b.Replica != replica {
			return nil
		}
		// Not running: it ended meanwhile, and stays ended.
		_ = b.Transition(Pushing, time.Now().UTC())
		return nil
	})
	return err
}

// Outcome is how a source build ended.
type Outcome struct {
	Result
	ImageRefs   []string
	ImageDigest string
	// GitCommit is the commit a git context was built from.
	GitCommit string
	// Replica is the replica whose run of the build this is the end of;
	// "" for an end decided elsewhere (a cancel, a restart's settling).
	Replica string
}

// FinishSource ends a source build unless it already ended, forgets its
// secrets and releases its builders. The build as stored is returned. An
// outcome with Replica ends the build only while it runs on that replica:
// one it no longer holds (it was taken over) is left alone.
func (s *Service) FinishSource(ctx context.Context, id string, o Outcome) (Build, error) {
	if len(o.Error) > 64<<10 {
		o.Error = o.Error[:64<<10]
	}
	ended, lost := false, false
	b, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
		if o.Replica != "" && !b.Terminal() && (b.Replica != o.Replica || b.Status == Queued) {
			lost = true // another replica runs it now, or will
			return nil
		}
		b.Secrets = ""
		if b.Transition(o.Status, time.Now().UTC()) != nil {
			return nil // it ended already: the first end wins
		}
		ended = true
		b.Error = o.Error
		if o.Status == Succeeded {
			b.ImageRefs, b.ImageDigest = o.ImageRefs, o.ImageDigest
		}
		b.GitCommit = o.GitCommit // known once resolved, whatever the end
		return nil
	})
	if err != nil || lost {
		return b, err
	}
	s.releaseAll(b)
	if ended {
		s.logger.InfoContext(ctx, "source build finished", "build_id", id, "project_id", b.ProjectID, "status", b.Status)
		s.cfg.Observer.BuildEnded(b)
	}
	return b, nil
}

// ConnectSource is Connect for kiln's runner: it leases the project's
// builder for platform to a running source build and, once the builder is
// ready, issues a client certificate. WaitMs > 0 means "ask again".
func (s *Service) ConnectSource(ctx context.Context, b Build, platform string) (Connection, error) {
	if !b.IsSource() {
		return Connection{}, fmt.Errorf("build %q is not a source build: %w", b.ID, errdefs.ErrFailedPrecondition)
	}
	return s.connect(ctx, b, platform)
}

// PushToken mints a build token for b alone, for its runner to push the
// image to kiln's registry with. It expires after ttl.
func (s *Service) PushToken(ctx context.Context, b Build, ttl time.Duration) (string, error) {
	secret, hash := auth.NewSecret(auth.TokenBuild)
	now := time.Now().UTC()
	t := auth.Token{ID: "tok_" + project.NewID(), Kind: auth.TokenBuild, OrgID: b.OrgID, ProjectID: b.ProjectID,
		BuildID: b.ID, Description: "source build push", SecretHash: hash, CreatedAt: now, ExpiresAt: now.Add(ttl),
		PolicyIDs: b.PolicyIDs}
	if !b.Until.IsZero() && b.Until.Before(t.ExpiresAt) {
		t.ExpiresAt = b.Until // a CI job's build: no later than the job's token
	}
	if err := s.store.CreateToken(ctx, t); err != nil {
		return "", err
	}
	return secret, nil
}

// StoreSteps records steps and log lines of a build: what kiln's runner
// observed, or what a client reported (ReportSteps, after its checks).
func (s *Service) StoreSteps(ctx context.Context, buildID string, steps []Step, logs []LogLine) error {
	if len(steps) > 0 {
		if err := s.store.PutSteps(ctx, buildID, steps); err != nil {
			return err
		}
	}
	if len(logs) > 0 {
		return s.store.AppendLogs(ctx, buildID, logs)
	}
	return nil
}
