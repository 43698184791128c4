package build

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// Pushes of a saved build to another registry (depot.cli.v1.PushService:
// `depot push`, `kiln push`). The client copies the image itself; it tells
// kiln when a push starts and how it ended, and kiln records each push as a
// step of the build ("pushing <tag>"), so a build's steps show where its
// image went and whether that worked. The step's digest is
// "push:<push id>"; its name starts with "pushing ", which usage
// statistics treat as BuildKit's own work, never as a build step.

const (
	pushDigestPrefix = "push:"
	// maxPushes bounds the push steps one build can collect.
	maxPushes = 100
	// maxPushTag bounds the destination recorded; longer is not a reference.
	maxPushTag = 512
	// maxPushError bounds the failure message kept for a push.
	maxPushError = 4096
)

// StartPush records the start of a push of build buildID's image to tag
// and returns the push id FinishPush takes.
func (s *Service) StartPush(ctx context.Context, p auth.Principal, buildID, tag string) (string, error) {
	b, err := s.Get(ctx, p, buildID)
	if err != nil {
		return "", err
	}
	if tag == "" || len(tag) > maxPushTag || strings.IndexFunc(tag, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0 {
		return "", fmt.Errorf("push tag %q: want an image reference such as registry.example.com/app:1: %w", clip(tag, 140), errdefs.ErrInvalid)
	}
	steps, err := s.store.ListSteps(ctx, b.ID)
	if err != nil {
		return "", err
	}
	n := 0
	for _, st := range steps {
		if strings.HasPrefix(st.Digest, pushDigestPrefix) {
			n++
		}
	}
	if n >= maxPushes {
		return "", fmt.Errorf("build %s already recorded %d pushes: %w", b.ID, n, errdefs.ErrExhausted)
	}
	id := "push_" + project.NewID()
	st := Step{Digest: pushDigestPrefix + id, Name: "pushing " + tag, StartedAt: time.Now().UTC()}
	if err := s.store.PutSteps(ctx, b.ID, []Step{st}); err != nil {
		return "", err
	}
	s.logger.InfoContext(ctx, "push started", "build_id", b.ID, "project_id", b.ProjectID, "push_id", id, "tag", tag)
	return id, nil
}

// FinishPush records how a push ended: failed with errMsg, or succeeded
// when errMsg is nil. Finishing a finished push changes nothing.
func (s *Service) FinishPush(ctx context.Context, p auth.Principal, buildID, pushID string, errMsg *string) error {
	b, err := s.Get(ctx, p, buildID)
	if err != nil {
		return err
	}
	if pushID == "" {
		return fmt.Errorf("push id is required: %w", errdefs.ErrInvalid)
	}
	steps, err := s.store.ListSteps(ctx, b.ID)
	if err != nil {
		return err
	}
	for _, st := range steps {
		if st.Digest != pushDigestPrefix+pushID {
			continue
		}
		if !st.CompletedAt.IsZero() {
			return nil
		}
		st.CompletedAt = time.Now().UTC()
		if errMsg != nil {
			st.Error = clip(*errMsg, maxPushError)
			if st.Error == "" {
				st.Error = "push failed"
			}
		}
		if err := s.store.PutSteps(ctx, b.ID, []Step{st}); err != nil {
			return err
		}
		s.logger.InfoContext(ctx, "push finished", "build_id", b.ID, "project_id", b.ProjectID, "push_id", pushID, "error", st.Error)
		return nil
	}
	return fmt.Errorf("push %q of build %s: %w", clip(pushID, 80), b.ID, errdefs.ErrNotFound)
}
