package registry

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// GCStats counts what one garbage collection did.
type GCStats struct {
	TagsExpired      int   // tags past their project's retention, removed
	ManifestsDeleted int   // manifests no live tag, index or subject keeps
	BlobsDeleted     int   // blobs no remaining manifest references
	BytesFreed       int64 // their size
	LinksDeleted     int   // repositories' links to blobs they no longer reference
	UploadsPurged    int   // upload sessions idle longer than the grace period
	Indexed          int   // manifests and tags storage had and the store missed
}

// Run collects garbage every GCInterval until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		st, err := r.CollectGarbage(ctx)
		if err != nil && ctx.Err() == nil {
			r.log.Error("registry garbage collection", "err", err)
		}
		if st != (GCStats{}) {
			r.log.Info("registry garbage collected", "took", time.Since(start).Round(time.Millisecond),
				"tags_expired", st.TagsExpired, "manifests_deleted", st.ManifestsDeleted, "blobs_deleted", st.BlobsDeleted,
				"bytes_freed", st.BytesFreed, "links_deleted", st.LinksDeleted, "uploads_purged", st.UploadsPurged, "indexed", st.Indexed)
		}
	}
}

// CollectGarbage runs one collection while the registry keeps serving.
//
// Per repository: index what storage holds and the store misses; expire
// tags older than the project's retention (every tag of a deleted
// project); keep the manifests reachable from the remaining tags, those
// pushed within the retention, and (transitively) the children of kept
// indexes and the referrers of kept manifests; delete the rest; delete the
// repository's links to blobs its kept manifests do not reference; purge
// upload sessions idle longer than the grace period. Then, over all
// repositories, delete every blob no kept manifest references.
//
// Why an in-flight push survives (distribution's MarkAndSweep does not
// promise it): nothing younger than the grace period is deleted (by its
// storage time), and nothing a request used within the grace period either
// (pins.go: requests pin what they name before distribution serves them;
// deletions check the pin under the same lock). A manifest pushed after a
// repository was marked pinned every digest it references, so the sweep
// skips them. If marking a repository fails, no blob is swept this run.
func (r *Registry) CollectGarbage(ctx context.Context) (GCStats, error) {
	r.gcMu.Lock()
	defer r.gcMu.Unlock()
	var st GCStats
	now := time.Now()
	repos, err := listRepos(ctx, r.driver)
	if err != nil {
		return st, fmt.Errorf("list repositories: %w", err)
	}
	marked := map[digest.Digest]bool{}
	var errs []error
	inStorage := map[string]bool{}
	for _, repo := range repos {
		inStorage[repo] = true
		refs, err := r.collectRepo(ctx, repo, now, &st)
		if err != nil {
			errs = append(errs, fmt.Errorf("repository %s: %w", repo, err))
			continue
		}
		for d := range refs {
			marked[d] = true
		}
		if err := r.sweepLinks(ctx, repo, refs, now, &st); err != nil {
			errs = append(errs, fmt.Errorf("repository %s links: %w", repo, err))
		}
		if err := r.purgeUploads(ctx, repo, now, &st); err != nil {
			errs = append(errs, fmt.Errorf("repository %s uploads: %w", repo, err))
		}
	}
	if err := r.forgetVanished(ctx, inStorage, now); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := r.sweepBlobs(ctx, marked, now, &st); err != nil {
			errs = append(errs, err)
		}
	}
	r.pins.prune(r.cfg.GCGrace)
	return st, errors.Join(errs...)
}

// retentionFor is a project's retention; gone reports a deleted project
// (whose images all expire).
func (r *Registry) retentionFor(ctx context.Context, projectID string) (d time.Duration, gone bool, err error) {
	if _, err := r.cfg.Store.GetProject(ctx, projectID); errdefs.IsNotFound(err) {
		return 0, true, nil
	} else if err != nil {
		return 0, false, err
	}
	rs, err := r.cfg.Store.GetRegistrySettings(ctx, projectID)
	if err != nil {
		return 0, false, err
	}
	if rs.Retention > 0 {
		return rs.Retention, false, nil
	}
	return r.cfg.Retention, false, nil
}

// collectRepo expires and deletes within one repository and returns the
// digests its kept manifests are and reference.
func (r *Registry) collectRepo(ctx context.Context, repo string, now time.Time, st *GCStats) (map[digest.Digest]bool, error) {
	grace := r.cfg.GCGrace
	named, err := reference.WithName(repo)
	if err != nil {
		return nil, err
	}
	rp, err := r.ns.Repository(ctx, named)
	if err != nil {
		return nil, err
	}
	manifests, err := rp.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	tagSvc := rp.Tags(ctx)
	retention, gone, err := r.retentionFor(ctx, projectOf(repo))
	if err != nil {
		return nil, err
	}
	cutoff := now.Add(-retention)
	if gone {
		// The project was deleted: everything expires, whenever pushed.
		cutoff = now.Add(100 * 365 * 24 * time.Hour)
	}

	// What storage holds.
	var digests []digest.Digest
	if err := manifests.(distribution.ManifestEnumerator).Enumerate(ctx, func(d digest.Digest) error {
		digests = append(digests, d)
		return nil
	}); err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("enumerate manifests: %w", err)
	}
	infos := map[digest.Digest]manifestInfo{}
	for _, d := range digests {
		body, err := r.driver.GetContent(ctx, blobDataPath(d))
		if err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("read manifest %s: %w", d, err)
		}
		if err == nil {
			infos[d] = parseManifest(body, "")
		}
	}
	tags, err := tagSvc.All(ctx)
	if err != nil && !isNotFound(err) && !isRepoUnknown(err) {
		return nil, fmt.Errorf("list tags: %w", err)
	}
	tagDigest := map[string]digest.Digest{}
	for _, t := range tags {
		desc, err := tagSvc.Get(ctx, t)
		if err != nil {
			continue // untagged meanwhile
		}
		tagDigest[t] = desc.Digest
	}

	// What the store says, reconciled with storage.
	rows, err := r.cfg.Store.ListRegistryManifests(ctx, repo)
	if err != nil {
		return nil, err
	}
	pushedAt := map[digest.Digest]time.Time{}
	for _, m := range rows {
		pushedAt[digest.Digest(m.Digest)] = m.PushedAt
	}
	inStorage := map[digest.Digest]bool{}
	for _, d := range digests {
		inStorage[d] = true
		if _, ok := pushedAt[d]; ok || gone {
			continue
		}
		if body, err := r.driver.GetContent(ctx, blobDataPath(d)); err == nil {
			if err := r.index(ctx, repo, d.String(), "", body, infos[d], now); err != nil {
				return nil, err
			}
			st.Indexed++
		}
		pushedAt[d] = now
	}
	for _, m := range rows {
		d := digest.Digest(m.Digest)
		if !inStorage[d] {
			if _, err := r.pins.ifIdle(digestKey(m.Digest), grace, func() error {
				return r.cfg.Store.DeleteRegistryManifest(ctx, repo, m.Digest)
			}); err != nil {
				return nil, err
			}
		}
	}
	tagRows, err := r.cfg.Store.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: repo})
	if err != nil {
		return nil, err
	}
	tagPushed := map[string]time.Time{}
	for _, t := range tagRows {
		if d, ok := tagDigest[t.Tag]; ok && d.String() == t.Digest {
			tagPushed[t.Tag] = t.PushedAt
			continue
		}
		if _, ok := tagDigest[t.Tag]; !ok {
			if _, err := r.pins.ifIdle(tagKey(repo, t.Tag), grace, func() error {
				return r.cfg.Store.DeleteRegistryTag(ctx, repo, t.Tag)
			}); err != nil {
				return nil, err
			}
		}
	}
	for t, d := range tagDigest {
		if _, ok := tagPushed[t]; ok || gone {
			continue
		}
		// Unless a push is moving the tag right now (its row is then the
		// push's to write).
		if _, err := r.pins.ifIdle(tagKey(repo, t), grace, func() error {
			return r.cfg.Store.PutRegistryTag(ctx, store.RegistryTag{Repo: repo, Tag: t, ProjectID: projectOf(repo), Digest: d.String(), PushedAt: now})
		}); err != nil {
			return nil, err
		}
		st.Indexed++
		tagPushed[t] = now
	}

	// Expire tags.
	for t := range tagDigest {
		if !tagPushed[t].Before(cutoff) {
			continue
		}
		ran, err := r.pins.ifIdle(tagKey(repo, t), grace, func() error {
			if err := tagSvc.Untag(ctx, t); err != nil && !isNotFound(err) {
				var unknown distribution.ErrTagUnknown
				if !errors.As(err, &unknown) {
					return err
				}
			}
			return r.cfg.Store.DeleteRegistryTag(ctx, repo, t)
		})
		if err != nil {
			return nil, fmt.Errorf("expire tag %s: %w", t, err)
		}
		if ran {
			st.TagsExpired++
			delete(tagDigest, t)
		}
	}

	// Keep what the remaining tags and the retention keep, and what kept
	// manifests reach.
	live := map[digest.Digest]bool{}
	for _, d := range tagDigest {
		live[d] = true
	}
	for _, d := range digests {
		if !pushedAt[d].Before(cutoff) {
			live[d] = true
		}
	}
	for changed := true; changed; {
		changed = false
		for _, d := range digests {
			if live[d] {
				for _, c := range infos[d].children {
					if inStorage[c.Digest] && !live[c.Digest] {
						live[c.Digest], changed = true, true
					}
				}
				continue
			}
			if s := infos[d].subject; s != "" && live[digest.Digest(s)] {
				live[d], changed = true, true
			}
		}
	}

	// Delete the rest (unless in use), and mark what is kept.
	refs := map[digest.Digest]bool{}
	for _, d := range digests {
		if !live[d] {
			ran, err := r.pins.ifIdle(digestKey(d.String()), grace, func() error {
				if err := manifests.Delete(ctx, d); err != nil && !errors.Is(err, distribution.ErrBlobUnknown) && !isNotFound(err) {
					return err
				}
				return r.cfg.Store.DeleteRegistryManifest(ctx, repo, d.String())
			})
			if err != nil {
				return nil, fmt.Errorf("delete manifest %s: %w", d, err)
			}
			if ran {
				st.ManifestsDeleted++
				continue
			}
		}
		refs[d] = true
		for _, b := range infos[d].blobs {
			refs[b.Digest] = true
		}
	}
	return refs, nil
}

// sweepLinks deletes the repository's links to blobs its kept manifests
// do not reference (uploaded or mounted, then never used by a manifest),
// once older than the grace period.
func (r *Registry) sweepLinks(ctx context.Context, repo string, refs map[digest.Digest]bool, now time.Time, st *GCStats) error {
	algs, err := r.driver.List(ctx, repoPath(repo, "_layers"))
	if isNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	for _, algDir := range algs {
		dirs, err := r.driver.List(ctx, algDir)
		if err != nil && !isNotFound(err) {
			return err
		}
		for _, dir := range dirs {
			d := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(algDir)), path.Base(dir))
			if d.Validate() != nil || refs[d] {
				continue
			}
			fi, err := r.driver.Stat(ctx, path.Join(dir, "link"))
			if err != nil {
				if isNotFound(err) {
					continue
				}
				return err
			}
			if now.Sub(fi.ModTime()) < r.cfg.GCGrace {
				continue
			}
			ran, err := r.pins.ifIdle(digestKey(d.String()), r.cfg.GCGrace, func() error {
				if err := r.driver.Delete(ctx, dir); err != nil && !isNotFound(err) {
					return err
				}
				return nil
			})
			if err != nil {
				return err
			}
			if ran {
				st.LinksDeleted++
			}
		}
	}
	return nil
}

// purgeUploads deletes upload sessions no request used within the grace
// period (by their data's time and the pins).
func (r *Registry) purgeUploads(ctx context.Context, repo string, now time.Time, st *GCStats) error {
	dirs, err := r.driver.List(ctx, repoPath(repo, "_uploads"))
	if isNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	for _, dir := range dirs {
		id := path.Base(dir)
		var last time.Time
		for _, f := range []string{"data", "startedat"} {
			if fi, err := r.driver.Stat(ctx, path.Join(dir, f)); err == nil && fi.ModTime().After(last) {
				last = fi.ModTime()
			}
		}
		// No file yet: a session being created right now (its id is not
		// pinned until the POST that creates it answers).
		if last.IsZero() || now.Sub(last) < r.cfg.GCGrace {
			continue
		}
		ran, err := r.pins.ifIdle(uploadKey(repo, id), r.cfg.GCGrace, func() error {
			if err := r.driver.Delete(ctx, dir); err != nil && !isNotFound(err) {
				return err
			}
			return nil
		})
		if err != nil {
			return err
		}
		if ran {
			st.UploadsPurged++
		}
	}
	return nil
}

// sweepBlobs deletes blobs no kept manifest references, older than the
// grace period and not in use.
func (r *Registry) sweepBlobs(ctx context.Context, marked map[digest.Digest]bool, now time.Time, st *GCStats) error {
	var candidates []digest.Digest
	err := r.ns.Blobs().Enumerate(ctx, func(d digest.Digest) error {
		if !marked[d] {
			candidates = append(candidates, d)
		}
		return nil
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("enumerate blobs: %w", err)
	}
	vacuum := storage.NewVacuum(ctx, r.driver)
	for _, d := range candidates {
		fi, err := r.driver.Stat(ctx, blobDataPath(d))
		if err != nil {
			if isNotFound(err) {
				continue
			}
			return err
		}
		if now.Sub(fi.ModTime()) < r.cfg.GCGrace {
			continue
		}
		ran, err := r.pins.ifIdle(digestKey(d.String()), r.cfg.GCGrace, func() error {
			if err := vacuum.RemoveBlob(d.String()); err != nil && !isNotFound(err) {
				return err
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("delete blob %s: %w", d, err)
		}
		if ran {
			st.BlobsDeleted++
			st.BytesFreed += fi.Size()
		}
	}
	return nil
}

// forgetVanished drops store rows of repositories storage no longer has
// (removed out of band), unless something there was pushed recently: a
// push creates storage before rows, so a fresh row means storage appeared
// after it was listed.
func (r *Registry) forgetVanished(ctx context.Context, inStorage map[string]bool, now time.Time) error {
	repos, err := r.cfg.Store.ListRegistryRepos(ctx)
	if err != nil {
		return err
	}
	for _, repo := range repos {
		if inStorage[repo] {
			continue
		}
		rows, err := r.cfg.Store.ListRegistryManifests(ctx, repo)
		if err != nil {
			return err
		}
		tags, err := r.cfg.Store.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: repo})
		if err != nil {
			return err
		}
		recent := false
		for _, m := range rows {
			recent = recent || now.Sub(m.PushedAt) < r.cfg.GCGrace
		}
		for _, t := range tags {
			recent = recent || now.Sub(t.PushedAt) < r.cfg.GCGrace
		}
		if !recent {
			if err := r.cfg.Store.DeleteRegistryRepo(ctx, repo); err != nil {
				return err
			}
		}
	}
	return nil
}

// isRepoUnknown reports distribution's "no such repository".
func isRepoUnknown(err error) bool {
	var e distribution.ErrRepositoryUnknown
	return errors.As(err, &e)
}
