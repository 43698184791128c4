package registry

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
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

// Run collects garbage every GCInterval until ctx ends; with
// Config.Exclusive, on one replica at a time.
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
		var st GCStats
		collect := func(ctx context.Context) (err error) {
			st, err = r.CollectGarbage(ctx)
			return err
		}
		var err error
		if r.cfg.Exclusive != nil {
			// Another replica collecting now: its collection covers this
			// one's storage (shared with it), so this tick is done.
			_, err = r.cfg.Exclusive(ctx, "registry-gc", collect)
		} else {
			err = collect(ctx)
		}
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
	now := r.cfg.Now()
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
// digests its kept manifests are and reference. Its phases: read what
// storage holds; reconcile the store's index with it; expire tags past
// retention; decide what is live (liveManifests, which is pure); delete
// the rest.
func (r *Registry) collectRepo(ctx context.Context, repo string, now time.Time, st *GCStats) (map[digest.Digest]bool, error) {
	g, err := r.openRepoGC(ctx, repo, now)
	if err != nil {
		return nil, err
	}
	c, err := g.read(ctx)
	if err != nil {
		return nil, err
	}
	if err := g.reconcileManifests(ctx, &c, st); err != nil {
		return nil, err
	}
	if err := g.reconcileTags(ctx, &c, st); err != nil {
		return nil, err
	}
	if err := g.expireTags(ctx, &c, st); err != nil {
		return nil, err
	}
	kept, err := g.deleteDead(ctx, c, liveManifests(c, g.cutoff), st)
	if err != nil {
		return nil, err
	}
	return referenced(kept, c.infos), nil
}

// repoGC is one repository's collection: distribution's services for it,
// and the times every phase decides by.
type repoGC struct {
	r         *Registry
	repo      string
	manifests distribution.ManifestService
	tags      distribution.TagService
	now       time.Time
	// cutoff: what was pushed before it is past the project's retention.
	cutoff time.Time
	// gone: the project was deleted. Everything expires, and nothing
	// storage has is indexed.
	gone bool
}

// repoContents is what one repository holds, as storage and the store say.
type repoContents struct {
	// digests are the manifests storage holds, in its order; infos what
	// each references (nothing for one that vanished while it was read).
	digests []digest.Digest
	infos   map[digest.Digest]manifestInfo
	// tags are storage's tags and the manifest each points at.
	tags map[string]digest.Digest
	// pushedAt and tagPushed are when each manifest and tag was pushed:
	// the store's rows, or now for what storage had and the store missed.
	// Missing (the zero time) only in a deleted project.
	pushedAt  map[digest.Digest]time.Time
	tagPushed map[string]time.Time
}

// openRepoGC opens repo's services and reads its project's retention.
func (r *Registry) openRepoGC(ctx context.Context, repo string, now time.Time) (*repoGC, error) {
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
	retention, gone, err := r.retentionFor(ctx, projectOf(repo))
	if err != nil {
		return nil, err
	}
	return &repoGC{r: r, repo: repo, manifests: manifests, tags: rp.Tags(ctx), now: now,
		cutoff: retentionCutoff(now, retention, gone), gone: gone}, nil
}

// retentionCutoff is the push time before which images expire: now less
// the retention, or (a deleted project) later than anything was pushed.
func retentionCutoff(now time.Time, retention time.Duration, gone bool) time.Time {
	if gone {
		return now.Add(100 * 365 * 24 * time.Hour)
	}
	return now.Add(-retention)
}

// read lists the manifests and tags storage holds, and what each manifest
// references.
func (g *repoGC) read(ctx context.Context) (repoContents, error) {
	c := repoContents{infos: map[digest.Digest]manifestInfo{}, tags: map[string]digest.Digest{}}
	if err := g.manifests.(distribution.ManifestEnumerator).Enumerate(ctx, func(d digest.Digest) error {
		c.digests = append(c.digests, d)
		return nil
	}); err != nil && !isNotFound(err) {
		return c, fmt.Errorf("enumerate manifests: %w", err)
	}
	for _, d := range c.digests {
		body, err := g.r.driver.GetContent(ctx, blobDataPath(d))
		if err != nil && !isNotFound(err) {
			return c, fmt.Errorf("read manifest %s: %w", d, err)
		}
		if err == nil {
			c.infos[d] = parseManifest(body, "")
		}
	}
	tags, err := g.tags.All(ctx)
	if err != nil && !isNotFound(err) && !isRepoUnknown(err) {
		return c, fmt.Errorf("list tags: %w", err)
	}
	for _, t := range tags {
		desc, err := g.tags.Get(ctx, t)
		if err != nil {
			continue // untagged meanwhile
		}
		c.tags[t] = desc.Digest
	}
	return c, nil
}

// reconcileManifests fills c.pushedAt from the store's manifest rows,
// indexes manifests storage has and the store missed (pushed now, as far
// as retention goes), and drops rows of manifests storage no longer has.
func (g *repoGC) reconcileManifests(ctx context.Context, c *repoContents, st *GCStats) error {
	rows, err := g.r.cfg.Store.ListRegistryManifests(ctx, g.repo)
	if err != nil {
		return err
	}
	c.pushedAt = map[digest.Digest]time.Time{}
	for _, m := range rows {
		c.pushedAt[digest.Digest(m.Digest)] = m.PushedAt
	}
	inStorage := map[digest.Digest]bool{}
	for _, d := range c.digests {
		inStorage[d] = true
		if _, ok := c.pushedAt[d]; ok || g.gone {
			continue
		}
		if body, err := g.r.driver.GetContent(ctx, blobDataPath(d)); err == nil {
			if err := g.r.index(ctx, g.repo, d.String(), "", body, c.infos[d], g.now); err != nil {
				return err
			}
			st.Indexed++
		}
		c.pushedAt[d] = g.now
	}
	for _, m := range rows {
		if inStorage[digest.Digest(m.Digest)] {
			continue
		}
		if _, err := g.r.pins.ifIdle(digestKey(m.Digest), g.r.cfg.GCGrace, func() error {
			return g.r.cfg.Store.DeleteRegistryManifest(ctx, g.repo, m.Digest)
		}); err != nil {
			return err
		}
	}
	return nil
}

// reconcileTags fills c.tagPushed from the store's tag rows that agree
// with storage, drops rows of tags storage no longer has, and indexes
// tags the store missed or has pointing elsewhere (pushed now).
func (g *repoGC) reconcileTags(ctx context.Context, c *repoContents, st *GCStats) error {
	grace := g.r.cfg.GCGrace
	rows, err := g.r.cfg.Store.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: g.repo})
	if err != nil {
		return err
	}
	c.tagPushed = map[string]time.Time{}
	for _, t := range rows {
		d, ok := c.tags[t.Tag]
		if ok && d.String() == t.Digest {
			c.tagPushed[t.Tag] = t.PushedAt
			continue
		}
		if ok {
			continue // indexed below
		}
		if _, err := g.r.pins.ifIdle(tagKey(g.repo, t.Tag), grace, func() error {
			return g.r.cfg.Store.DeleteRegistryTag(ctx, g.repo, t.Tag)
		}); err != nil {
			return err
		}
	}
	for t, d := range c.tags {
		if _, ok := c.tagPushed[t]; ok || g.gone {
			continue
		}
		// Unless a push is moving the tag right now (its row is then the
		// push's to write).
		if _, err := g.r.pins.ifIdle(tagKey(g.repo, t), grace, func() error {
			return g.r.cfg.Store.PutRegistryTag(ctx, store.RegistryTag{Repo: g.repo, Tag: t, ProjectID: projectOf(g.repo), Digest: d.String(), PushedAt: g.now})
		}); err != nil {
			return err
		}
		st.Indexed++
		c.tagPushed[t] = g.now
	}
	return nil
}

// expireTags untags what expiredTags names, unless in use; c.tags keeps
// the tags that remain.
func (g *repoGC) expireTags(ctx context.Context, c *repoContents, st *GCStats) error {
	for _, t := range expiredTags(*c, g.cutoff) {
		ran, err := g.r.pins.ifIdle(tagKey(g.repo, t), g.r.cfg.GCGrace, func() error {
			if err := g.tags.Untag(ctx, t); err != nil && !isNotFound(err) {
				var unknown distribution.ErrTagUnknown
				if !errors.As(err, &unknown) {
					return err
				}
			}
			return g.r.cfg.Store.DeleteRegistryTag(ctx, g.repo, t)
		})
		if err != nil {
			return fmt.Errorf("expire tag %s: %w", t, err)
		}
		if ran {
			st.TagsExpired++
			delete(c.tags, t)
		}
	}
	return nil
}

// deleteDead deletes the manifests not live, unless in use, and returns
// the manifests kept (live, or spared because in use).
func (g *repoGC) deleteDead(ctx context.Context, c repoContents, live map[digest.Digest]bool, st *GCStats) ([]digest.Digest, error) {
	var kept []digest.Digest
	for _, d := range c.digests {
		if !live[d] {
			ran, err := g.r.pins.ifIdle(digestKey(d.String()), g.r.cfg.GCGrace, func() error {
				if err := g.manifests.Delete(ctx, d); err != nil && !errors.Is(err, distribution.ErrBlobUnknown) && !isNotFound(err) {
					return err
				}
				return g.r.cfg.Store.DeleteRegistryManifest(ctx, g.repo, d.String())
			})
			if err != nil {
				return nil, fmt.Errorf("delete manifest %s: %w", d, err)
			}
			if ran {
				st.ManifestsDeleted++
				continue
			}
		}
		kept = append(kept, d)
	}
	return kept, nil
}

// expiredTags are the tags of c pushed before cutoff, sorted.
func expiredTags(c repoContents, cutoff time.Time) []string {
	var out []string
	for t := range c.tags {
		if c.tagPushed[t].Before(cutoff) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// liveManifests is the collector's liveness rule: which manifests of c
// must stay. Live are the manifests c's tags point at, those pushed at or
// after cutoff, and, transitively, the children of a live index that
// storage holds and every manifest whose subject is live (its referrers:
// signatures, SBOMs, attestations). The rest is dead. It reads no storage,
// store or clock.
func liveManifests(c repoContents, cutoff time.Time) map[digest.Digest]bool {
	inStorage := make(map[digest.Digest]bool, len(c.digests))
	for _, d := range c.digests {
		inStorage[d] = true
	}
	live := map[digest.Digest]bool{}
	for _, d := range c.tags {
		live[d] = true
	}
	for _, d := range c.digests {
		if !c.pushedAt[d].Before(cutoff) {
			live[d] = true
		}
	}
	// Until nothing changes: a manifest made live can make others live.
	for changed := true; changed; {
		changed = false
		for _, d := range c.digests {
			if live[d] {
				for _, ch := range c.infos[d].children {
					if inStorage[ch.Digest] && !live[ch.Digest] {
						live[ch.Digest], changed = true, true
					}
				}
				continue
			}
			if s := c.infos[d].subject; s != "" && live[digest.Digest(s)] {
				live[d], changed = true, true
			}
		}
	}
	return live
}

// referenced is the digests the kept manifests are and reference (their
// config and layers): what the repository's links and the blob sweep keep.
func referenced(kept []digest.Digest, infos map[digest.Digest]manifestInfo) map[digest.Digest]bool {
	refs := map[digest.Digest]bool{}
	for _, d := range kept {
		refs[d] = true
		for _, b := range infos[d].blobs {
			refs[b.Digest] = true
		}
	}
	return refs
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
