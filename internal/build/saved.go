package build

import (
	"fmt"
	"regexp"
	"slices"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Saved builds. A build run with --save (BuildOptions.save) is pushed by
// its client to kiln's registry as <registry host>/<project id>:<build id>,
// and as <registry host>/<project id>:<tag> for each --save-tag
// (BuildOptions.save_tags). CreateBuild tells the client these references
// and lends it the build token to push with; the registry decides what a
// token may push (a build token: its own project's repositories only).

// MaxSaveTags bounds --save-tag values per build.
const MaxSaveTags = 20

// saveTagRe is the OCI distribution-spec tag grammar.
var saveTagRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// RegistryHost is where kiln's registry is reached ("host:port"), or ""
// when the server has none.
func (s *Service) RegistryHost() string {
	if s.cfg.RegistryHost == nil {
		return ""
	}
	return s.cfg.RegistryHost()
}

// CheckSave validates a --save request before its build is created: the
// server must have a registry, and every tag must be a valid OCI tag.
func (s *Service) CheckSave(tags []string) error {
	if s.RegistryHost() == "" {
		return fmt.Errorf("--save: this kiln server has no registry to save to: %w", errdefs.ErrFailedPrecondition)
	}
	if len(tags) > MaxSaveTags {
		return fmt.Errorf("--save-tag given %d times; at most %d: %w", len(tags), MaxSaveTags, errdefs.ErrInvalid)
	}
	for _, t := range tags {
		if !saveTagRe.MatchString(t) {
			return fmt.Errorf("--save-tag %q: not a valid tag (letters, digits, '_', '.', '-'; up to 128, not starting with '.' or '-'): %w", clip(t, 140), errdefs.ErrInvalid)
		}
	}
	return nil
}

// SaveRefs are the references a saved build is pushed to: the build's own
// reference first, then one per distinct tag (call CheckSave first).
func (s *Service) SaveRefs(b Build, tags []string) []string {
	refs := []string{s.SavedRef(b)}
	for _, t := range tags {
		if r := s.RegistryHost() + "/" + b.ProjectID + ":" + t; !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	return refs
}

// SavedRef is where build b's image is, if it was saved.
func (s *Service) SavedRef(b Build) string {
	return s.RegistryHost() + "/" + b.ProjectID + ":" + b.ID
}

// clip shortens untrusted input quoted back in an error.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
