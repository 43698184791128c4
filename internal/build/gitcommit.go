package build

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// commitRe is a full git commit SHA (SHA-1 or SHA-256 repositories).
var commitRe = regexp.MustCompile(`^(?:[0-9a-f]{40}|[0-9a-f]{64})$`)

// RecordGitCommit records the commit a client build of a git context
// built (the client resolved it on the builder and pinned the build to
// it: engine/git.go). Only the build's own build token may, while the
// build runs; a source build's commit is the runner's to record.
func (s *Service) RecordGitCommit(ctx context.Context, p auth.Principal, id, commit string) error {
	commit = strings.ToLower(commit)
	switch {
	case p.Kind != auth.TokenBuild || p.BuildID != id || id == "":
		return fmt.Errorf("only build %q's own build token may record its git commit: %w", id, errdefs.ErrPermission)
	case !commitRe.MatchString(commit):
		return fmt.Errorf("git commit %q: want a full commit SHA (40 or 64 hex digits): %w", clip(commit, 80), errdefs.ErrInvalid)
	}
	_, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
		switch {
		case b.IsSource():
			return fmt.Errorf("build %q is a source build; kiln records its commit itself: %w", id, errdefs.ErrFailedPrecondition)
		case b.Terminal():
			return fmt.Errorf("build %q has ended: %w", id, errdefs.ErrFailedPrecondition)
		}
		b.GitCommit = commit
		return nil
	})
	return err
}
