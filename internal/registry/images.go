package registry

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retention"
	"github.com/kiln-dev/kiln/internal/store"
)

// Image is a tag saved in a project's repositories.
type Image struct {
	// Tag is "<tag>" in the project's own repository (<project-id>) and
	// "<name>:<tag>" in <project-id>/<name>.
	Tag      string
	Digest   string
	PushedAt time.Time
	// Size is the manifest and what it references, as known at push time
	// (an index: its manifests'; blobs shared between them count once per
	// manifest).
	Size int64
}

// Page sizes of ListImages.
const (
	defaultImagePage = 100
	maxImagePage     = 1000
)

// authorizeProject checks p's rights in a project: a caller who may not
// even pull learns nothing (NotFound); one who may pull but not do want
// gets PermissionDenied.
func (r *Registry) authorizeProject(ctx context.Context, p auth.Principal, projectID string, want action) error {
	if projectID == "" {
		return fmt.Errorf("project id is required: %w", errdefs.ErrInvalid)
	}
	have, err := r.rights(ctx, caller{p: p}, projectID, rightsCache{})
	if err != nil {
		return err
	}
	if have&actPull == 0 {
		return fmt.Errorf("project %q: %w", projectID, errdefs.ErrNotFound)
	}
	if have&want != want {
		return fmt.Errorf("this token may not %s images of project %q: %w", want, projectID, errdefs.ErrPermission)
	}
	return nil
}

// ListImages lists a project's saved images in (repository, tag) order,
// pageSize at a time (0 → 100, at most 1000); pageToken continues a listing.
func (r *Registry) ListImages(ctx context.Context, p auth.Principal, projectID string, pageSize int, pageToken string) ([]Image, string, error) {
	if err := r.authorizeProject(ctx, p, projectID, actPull); err != nil {
		return nil, "", err
	}
	if pageSize <= 0 {
		pageSize = defaultImagePage
	}
	pageSize = min(pageSize, maxImagePage)
	q := store.RegistryTagQuery{ProjectID: projectID, Limit: pageSize + 1}
	if pageToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(pageToken)
		repo, tag, ok := strings.Cut(string(raw), "\x00")
		if err != nil || !ok {
			return nil, "", fmt.Errorf("invalid page token: %w", errdefs.ErrInvalid)
		}
		q.AfterRepo, q.AfterTag = repo, tag
	}
	rows, err := r.cfg.Store.ListRegistryTags(ctx, q)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(rows) > pageSize {
		rows = rows[:pageSize]
		last := rows[len(rows)-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(last.Repo + "\x00" + last.Tag))
	}
	out := make([]Image, 0, len(rows))
	for _, t := range rows {
		name := t.Tag
		if rest, ok := strings.CutPrefix(t.Repo, projectID+"/"); ok {
			name = rest + ":" + t.Tag
		}
		out = append(out, Image{Tag: name, Digest: t.Digest, PushedAt: t.PushedAt, Size: t.Size})
	}
	return out, next, nil
}

// DeleteImages removes tags ("tag" or "<name>:tag", as ListImages shows
// them) from a project's repositories. Tags that do not exist are skipped.
// The manifests they pointed at, and their indexes' manifests, lose the
// retention their push gave them: the next collection deletes whatever no
// other tag, index or subject keeps, and the blobs with them.
func (r *Registry) DeleteImages(ctx context.Context, p auth.Principal, projectID string, tags []string) error {
	if err := r.authorizeProject(ctx, p, projectID, actDelete); err != nil {
		return err
	}
	if len(tags) > 1000 {
		return fmt.Errorf("at most 1000 tags at once: %w", errdefs.ErrInvalid)
	}
	type target struct{ repo, tag string }
	var targets []target
	for _, t := range tags {
		repo, tag := projectID, t
		if name, tg, ok := strings.Cut(t, ":"); ok {
			repo, tag = projectID+"/"+name, tg
		}
		if !validRepository(repo) || !tagPattern.MatchString(tag) {
			return fmt.Errorf("image tag %s: use TAG or NAME:TAG: %w", quote(t), errdefs.ErrInvalid)
		}
		targets = append(targets, target{repo, tag})
	}
	for _, t := range targets {
		named, err := reference.WithName(t.repo)
		if err != nil {
			return err
		}
		rp, err := r.ns.Repository(ctx, named)
		if err != nil {
			return err
		}
		tagSvc := rp.Tags(ctx)
		desc, err := tagSvc.Get(ctx, t.tag)
		if err != nil {
			continue // no such tag
		}
		r.pins.touch(tagKey(t.repo, t.tag))
		if err := tagSvc.Untag(ctx, t.tag); err != nil && !isNotFound(err) {
			return fmt.Errorf("untag %s:%s: %w", t.repo, t.tag, err)
		}
		if err := r.cfg.Store.DeleteRegistryTag(ctx, t.repo, t.tag); err != nil {
			return err
		}
		if err := r.expireManifest(ctx, t.repo, desc.Digest, 0); err != nil {
			return err
		}
	}
	return nil
}

// expireManifest backdates a manifest's (and, for an index, its
// manifests') push time so retention no longer keeps it.
func (r *Registry) expireManifest(ctx context.Context, repo string, d digest.Digest, depth int) error {
	if depth > 4 {
		return nil
	}
	m, err := r.cfg.Store.GetRegistryManifest(ctx, repo, d.String())
	if errdefs.IsNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	m.PushedAt = time.Time{}
	if err := r.cfg.Store.PutRegistryManifest(ctx, m, ""); err != nil {
		return err
	}
	body, err := r.driver.GetContent(ctx, blobDataPath(d))
	if err != nil {
		return nil // gone already
	}
	for _, c := range parseManifest(body, "").children {
		if err := r.expireManifest(ctx, repo, c.Digest, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// Retention returns a project's retention and whether the project set it
// (false: the server's default applies).
func (r *Registry) Retention(ctx context.Context, p auth.Principal, projectID string) (time.Duration, bool, error) {
	if err := r.authorizeProject(ctx, p, projectID, actPull); err != nil {
		return 0, false, err
	}
	rs, err := r.cfg.Store.GetRegistrySettings(ctx, projectID)
	if err != nil {
		return 0, false, err
	}
	if rs.Retention > 0 {
		return rs.Retention, true, nil
	}
	return r.cfg.Retention, false, nil
}

// MaxRetention bounds a project's retention.
const MaxRetention = retention.Max

// SetRetention sets a project's retention (0: back to the server's
// default). It needs an organization token, like every project setting.
func (r *Registry) SetRetention(ctx context.Context, p auth.Principal, projectID string, d time.Duration) error {
	if err := r.authorizeProject(ctx, p, projectID, actPull); err != nil {
		return err
	}
	if !p.IsOrg() {
		return fmt.Errorf("changing a project's registry retention needs an organization token: %w", errdefs.ErrPermission)
	}
	if d < 0 || d > MaxRetention || (d > 0 && d < time.Second) {
		return fmt.Errorf("retention %s: must be 0 (the server default) or between 1s and 10 years: %w", d, errdefs.ErrInvalid)
	}
	return r.cfg.Store.PutRegistrySettings(ctx, store.RegistrySettings{ProjectID: projectID, Retention: d.Truncate(time.Second)})
}

// ParseRetention reads a retention: a number of days ("14d") or a Go
// duration ("36h", "90m", "30s"); "0" means the default.
func ParseRetention(s string) (time.Duration, error) { return retention.Parse(s) }

// FormatRetention writes a retention the way ParseRetention reads it,
// in days when whole.
func FormatRetention(d time.Duration) string { return retention.Format(d) }
