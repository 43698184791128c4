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
// lost builder and the runner's own result can race safely.

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

// StartSource moves a queued source build to running. ok is false when the
// build is no longer queued (it was canceled while it waited).
func (s *Service) StartSource(ctx context.Context, id string) (b Build, ok bool, err error) {
	b, err = s.store.UpdateBuild(ctx, id, func(b *Build) error {
		now := time.Now().UTC()
		if b.Transition(Running, now) != nil {
			return nil // not queued: canceled while it waited
		}
		ok, b.LastHealthAt = true, now
		return nil
	})
	if ok && err == nil {
		s.cfg.Observer.BuildStarted(b)
	}
	return b, ok, err
}

// SetPushing records that a running source build is exporting its image.
func (s *Service) SetPushing(ctx context.Context, id string) error {
	_, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
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
}

// FinishSource ends a source build unless it already ended, forgets its
// secrets and releases its builders. The build as stored is returned.
func (s *Service) FinishSource(ctx context.Context, id string, o Outcome) (Build, error) {
	if len(o.Error) > 64<<10 {
		o.Error = o.Error[:64<<10]
	}
	ended := false
	b, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
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
	if err != nil {
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
