package build

import (
	"context"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Sharing a build makes a read-only summary of it (status, times, steps;
// not logs) readable without authentication at a URL with a random token:
// Config.ShareURL(token), by default "/shared/<token>" on the server. A
// build has at most one share; sharing again returns the same URL, and
// StopSharing revokes it at once.

// shareTokenLen random characters of [0-9A-Za-z]: about 190 bits.
const shareTokenLen = 32

// ValidShareToken reports whether tok has the shape of a share token, so
// that garbage is turned away before it reaches the store.
func ValidShareToken(tok string) bool {
	if len(tok) != shareTokenLen {
		return false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// shareable returns a build the principal may share: org tokens any build
// of their organization, project tokens and CI jobs whose policy has role
// "project" their projects' builds (auth.Manage). Build tokens and CI jobs'
// default role may not: they exist to run builds, not to publish them.
func (s *Service) shareable(ctx context.Context, p auth.Principal, buildID string) (Build, error) {
	if p.Kind == auth.TokenBuild {
		return Build{}, fmt.Errorf("build tokens cannot share builds: %w", errdefs.ErrPermission)
	}
	b, err := s.Get(ctx, p, buildID)
	if err != nil {
		return Build{}, err
	}
	if !p.CanManage(b) {
		return Build{}, fmt.Errorf("sharing build %q: a CI job's default role may not share builds; a trust policy with role %q may: %w",
			b.ID, auth.RoleProject, errdefs.ErrPermission)
	}
	return b, nil
}

func (s *Service) shareURL(token string) string {
	if s.cfg.ShareURL != nil {
		return s.cfg.ShareURL(token)
	}
	return "/shared/" + token
}

// Share makes the build readable by anyone with the returned URL.
func (s *Service) Share(ctx context.Context, p auth.Principal, buildID string) (string, error) {
	b, err := s.shareable(ctx, p, buildID)
	if err != nil {
		return "", err
	}
	if sh, err := s.store.GetBuildShare(ctx, b.ID); err == nil {
		return s.shareURL(sh.Token), nil
	} else if !errdefs.IsNotFound(err) {
		return "", err
	}
	sh := Share{BuildID: b.ID, Token: auth.RandomString(shareTokenLen), CreatedBy: p.TokenID, CreatedAt: time.Now().UTC()}
	if err := s.store.CreateBuildShare(ctx, sh); err != nil {
		// A concurrent Share won: answer its URL.
		if existing, gerr := s.store.GetBuildShare(ctx, b.ID); gerr == nil {
			return s.shareURL(existing.Token), nil
		}
		return "", err
	}
	s.logger.InfoContext(ctx, "build shared", "build_id", b.ID, "project_id", b.ProjectID, "token_id", p.TokenID)
	return s.shareURL(sh.Token), nil
}

// StopSharing revokes the build's share URL. Revoking a build that is not
// shared succeeds (the outcome the caller wants holds).
func (s *Service) StopSharing(ctx context.Context, p auth.Principal, buildID string) error {
	b, err := s.shareable(ctx, p, buildID)
	if err != nil {
		return err
	}
	if err := s.store.DeleteBuildShare(ctx, b.ID); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	s.logger.InfoContext(ctx, "build unshared", "build_id", b.ID, "project_id", b.ProjectID, "token_id", p.TokenID)
	return nil
}

// SharedBuild is what a share URL shows.
type SharedBuild struct {
	Build Build
	Stats Stats
	Steps []Step
}

// Shared resolves a share token without authentication. Any token that is
// malformed, unknown or revoked is the same ErrNotFound.
func (s *Service) Shared(ctx context.Context, token string) (SharedBuild, error) {
	notFound := fmt.Errorf("shared build: %w", errdefs.ErrNotFound)
	if !ValidShareToken(token) {
		return SharedBuild{}, notFound
	}
	sh, err := s.store.GetBuildShareByToken(ctx, token)
	if errdefs.IsNotFound(err) {
		return SharedBuild{}, notFound
	}
	if err != nil {
		return SharedBuild{}, err
	}
	b, err := s.store.GetBuild(ctx, sh.BuildID)
	if errdefs.IsNotFound(err) {
		return SharedBuild{}, notFound
	}
	if err != nil {
		return SharedBuild{}, err
	}
	st, steps, err := s.stats(ctx, b)
	if err != nil {
		return SharedBuild{}, err
	}
	return SharedBuild{Build: b, Stats: st, Steps: steps}, nil
}
