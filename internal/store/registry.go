package store

import (
	"context"
	"time"
)

// RegistryManifest is one manifest pushed to kiln's registry, as indexed
// after the push succeeded. The manifest itself lives in the registry's
// storage; this row is what retention, ListImages and the OCI referrers API
// read.
type RegistryManifest struct {
	Repo      string // "<project-id>[/<name>]"
	Digest    string // "sha256:<hex>"
	ProjectID string // Repo's first path segment
	MediaType string
	// ArtifactType is what the referrers API reports: the manifest's
	// artifactType, else its config's media type; "" for an index without one.
	ArtifactType string
	// Subject is the digest in the manifest's "subject" field; "" if none.
	Subject string
	Size    int64 // the manifest's own bytes
	// TotalSize adds what the manifest references (config and layers; an
	// index: its manifests' totals), as far as known when it was pushed.
	TotalSize   int64
	Annotations map[string]string
	PushedAt    time.Time
}

// RegistryTag is a tag of a repository in kiln's registry.
type RegistryTag struct {
	Repo      string
	Tag       string
	ProjectID string
	Digest    string
	// PushedAt is when the tag was last pushed or moved; retention counts
	// from it.
	PushedAt time.Time
	// Size is the TotalSize of the manifest the tag points at, 0 when that
	// manifest is not indexed (filled by ListRegistryTags).
	Size int64
}

// RegistryTagQuery selects tags for ListRegistryTags. Results are ordered
// by (Repo, Tag); After* continue after the given pair.
type RegistryTagQuery struct {
	ProjectID string // required unless Repo is set
	Repo      string // "" → every repository of ProjectID
	AfterRepo string
	AfterTag  string
	Limit     int // <= 0 → no limit
}

// RegistrySettings are a project's registry settings.
type RegistrySettings struct {
	ProjectID string
	// Retention: saved images expire this long after they were pushed;
	// 0 → the server's default.
	Retention time.Duration
}

// RegistryIndex is the part of the Store that indexes kiln's registry.
type RegistryIndex interface {
	// PutRegistryManifest records m (replacing an earlier row of the same
	// repo and digest) and, if tag is not "", points tag at it, in one
	// transaction.
	PutRegistryManifest(ctx context.Context, m RegistryManifest, tag string) error
	GetRegistryManifest(ctx context.Context, repo, digest string) (RegistryManifest, error)
	// ListRegistryManifests lists one repository's manifests, by digest.
	ListRegistryManifests(ctx context.Context, repo string) ([]RegistryManifest, error)
	// ListRegistryReferrers lists the manifests of repo whose subject is
	// subject (only those of artifactType, unless it is ""), oldest first.
	ListRegistryReferrers(ctx context.Context, repo, subject, artifactType string) ([]RegistryManifest, error)
	// DeleteRegistryManifest removes a manifest and every tag of its
	// repository that points at it. Deleting a missing one is no error.
	DeleteRegistryManifest(ctx context.Context, repo, digest string) error

	// ListRegistryTags lists tags in (Repo, Tag) order.
	ListRegistryTags(ctx context.Context, q RegistryTagQuery) ([]RegistryTag, error)
	// PutRegistryTag records a tag (replacing an earlier row of the same
	// repo and tag); Size is ignored.
	PutRegistryTag(ctx context.Context, t RegistryTag) error
	// DeleteRegistryTag removes one tag; a missing one is no error.
	DeleteRegistryTag(ctx context.Context, repo, tag string) error

	// ListRegistryRepos lists every repository that has rows, sorted.
	ListRegistryRepos(ctx context.Context) ([]string, error)
	// DeleteRegistryRepo removes every manifest and tag row of a repository.
	DeleteRegistryRepo(ctx context.Context, repo string) error

	// GetRegistrySettings returns a project's settings; a project that
	// never set any gets zero settings (and no error).
	GetRegistrySettings(ctx context.Context, projectID string) (RegistrySettings, error)
	PutRegistrySettings(ctx context.Context, s RegistrySettings) error
}
