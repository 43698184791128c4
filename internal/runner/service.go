package runner

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// The operations of kiln.v1.SourceBuildService. Each takes the caller and
// authorizes against the project or build it touches: another project's
// contexts, builds and logs answer NotFound, exactly as if they did not
// exist.

// Upload is the answer to GenerateUploadURL.
type Upload struct {
	blob.Presigned
	ContextKey string
	ProjectID  string
	MaxSize    int64
}

// contextKeyPrefix marks context keys, like token prefixes mark tokens.
const contextKeyPrefix = "ctx_"

// Upload records a new context of the project (or customer's project) and
// returns a URL that accepts one PUT of it, straight to blob storage.
func (r *Runner) Upload(ctx context.Context, p auth.Principal, projectID, customerID string, size int64, sha256 string) (Upload, error) {
	proj, err := r.projects.ForBuild(ctx, p, projectID, customerID)
	if err != nil {
		return Upload{}, err
	}
	max := r.cfg.Archive.CompressedBytes
	switch {
	case size < 0:
		return Upload{}, fmt.Errorf("size %d: want the upload's size in bytes, or 0 if unknown: %w", size, errdefs.ErrInvalid)
	case size > max:
		return Upload{}, fmt.Errorf("the context is %d bytes; this server accepts at most %d (exclude files with .dockerignore): %w", size, max, errdefs.ErrExhausted)
	}
	if sha256 != "" {
		sha256 = strings.ToLower(strings.TrimPrefix(sha256, "sha256:"))
		if b, err := hex.DecodeString(sha256); err != nil || len(b) != 32 {
			return Upload{}, fmt.Errorf("sha256 %q: want 64 hex digits: %w", clip(sha256, 80), errdefs.ErrInvalid)
		}
	}
	// Counting, reserving and recording are one step per project, so
	// concurrent uploads can't each see the same room.
	unlock := r.lockProject(proj.ID)
	defer unlock()
	now := time.Now().UTC()
	if n, err := r.store.CountContexts(ctx, proj.ID, now); err != nil {
		return Upload{}, err
	} else if n >= r.cfg.MaxContextsPerProject {
		return Upload{}, fmt.Errorf("project %s already has %d uploaded contexts retained; they are deleted %s after upload: %w",
			proj.ID, n, r.cfg.ContextRetention, errdefs.ErrExhausted)
	}
	charge, max, err := r.reserve(ctx, proj.ID, size, now)
	if err != nil {
		return Upload{}, err
	}
	key := contextKeyPrefix + strings.ToLower(auth.RandomString(24))
	c := store.Context{Key: key, OrgID: proj.OrgID, ProjectID: proj.ID, BlobKey: "contexts/" + proj.ID + "/" + key,
		Size: size, SHA256: sha256, Charged: charge, CreatedAt: now, ExpiresAt: now.Add(r.cfg.ContextRetention)}
	ps, err := r.blobs.PresignPut(ctx, c.BlobKey, blob.PutOptions{TTL: r.cfg.UploadTTL, Size: size, MaxSize: max, SHA256: sha256})
	if err != nil {
		return Upload{}, err
	}
	if err := r.store.CreateContext(ctx, c); err != nil {
		return Upload{}, err
	}
	r.log.InfoContext(ctx, "upload URL issued", "project_id", proj.ID, "context_key", key, "size", size, "charged", charge)
	return Upload{Presigned: ps, ContextKey: key, ProjectID: proj.ID, MaxSize: max}, nil
}

// Create queues a build of an uploaded context, or of a git URL the
// builder fetches, and returns it at once.
func (r *Runner) Create(ctx context.Context, p auth.Principal, projectID, customerID string, spec Spec, secrets map[string]string) (build.Build, error) {
	proj, err := r.projects.ForBuild(ctx, p, projectID, customerID)
	if err != nil {
		return build.Build{}, err
	}
	if err := spec.normalize(secrets); err != nil {
		return build.Build{}, err
	}
	if spec.GitURL != "" {
		if err := r.checkGitHost(ctx, proj, spec.GitURL); err != nil {
			return build.Build{}, err
		}
	} else if _, err := r.usableContext(ctx, proj.ID, spec.ContextKey); err != nil {
		return build.Build{}, err
	}
	return r.queue(ctx, p, proj, spec, secrets)
}

// usableContext checks that a context is the project's, still retained
// and uploaded.
func (r *Runner) usableContext(ctx context.Context, projectID, key string) (store.Context, error) {
	c, err := r.store.GetContext(ctx, key)
	if errdefs.IsNotFound(err) || err == nil && c.ProjectID != projectID {
		return store.Context{}, fmt.Errorf("context %q: %w", clip(key, 80), errdefs.ErrNotFound)
	}
	if err != nil {
		return store.Context{}, err
	}
	if time.Now().After(c.ExpiresAt) {
		return store.Context{}, fmt.Errorf("context %q expired at %s; upload it again: %w", key, c.ExpiresAt.Format(time.RFC3339), errdefs.ErrFailedPrecondition)
	}
	info, err := r.blobs.Stat(ctx, c.BlobKey)
	if errdefs.IsNotFound(err) {
		return store.Context{}, fmt.Errorf("context %q has not been uploaded yet: PUT it to the upload URL first: %w", key, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return store.Context{}, fmt.Errorf("context %q: checking storage: %w", key, err)
	}
	if c.Size > 0 && info.Size != c.Size {
		return store.Context{}, fmt.Errorf("context %q is %d bytes but %d were declared: upload it again: %w", key, info.Size, c.Size, errdefs.ErrInvalid)
	}
	r.settleOne(ctx, c, info.Size)
	return c, nil
}

func (r *Runner) queue(ctx context.Context, p auth.Principal, proj project.Project, spec Spec, secrets map[string]string) (build.Build, error) {
	// Tags are checked now so a bad one fails CreateBuild, not the build.
	if _, err := refs(r.cfg.RegistryHost(), proj.ID, "id", spec.Tags, r.pushHosts()); err != nil {
		return build.Build{}, err
	}
	// The queue's bound holds for concurrent calls too: a slot is taken
	// under the lock, before the build is written, and given back when it
	// is enqueued or was not created.
	r.mu.Lock()
	closed, waiting := r.closed, len(r.queues[proj.ID])+r.creating[proj.ID]
	if !closed && waiting < r.cfg.MaxQueuedPerProject {
		r.creating[proj.ID]++
	}
	r.mu.Unlock()
	if closed {
		return build.Build{}, fmt.Errorf("kiln serve is shutting down; retry in a moment: %w", errdefs.ErrUnavailable)
	}
	if waiting >= r.cfg.MaxQueuedPerProject {
		return build.Build{}, fmt.Errorf("project %s already has %d builds waiting; retry when some have started, or cancel some: %w",
			proj.ID, waiting, errdefs.ErrExhausted)
	}
	defer func() {
		r.mu.Lock()
		if r.creating[proj.ID]--; r.creating[proj.ID] <= 0 {
			delete(r.creating, proj.ID)
		}
		r.mu.Unlock()
	}()
	id := build.NewID()
	sealed, err := r.seal.seal(id, secrets)
	if err != nil {
		return build.Build{}, fmt.Errorf("seal secrets: %w", err)
	}
	b, err := r.builds.CreateSource(ctx, p, proj, id, spec.encode(), sealed)
	if err != nil {
		return build.Build{}, err
	}
	r.enqueue(b)
	return b, nil
}

// Get returns a build the caller may see, with its spec for a source
// build (zero for a client build) and its queue position when queued.
func (r *Runner) Get(ctx context.Context, p auth.Principal, id string) (build.Build, Spec, int, error) {
	b, err := r.builds.Get(ctx, p, id)
	if err != nil {
		return build.Build{}, Spec{}, 0, err
	}
	spec, pos := r.Describe(b)
	return b, spec, pos, nil
}

// Describe returns a build's spec (zero for a client build) and, while it
// is queued, its position in the queue. The caller has authorized b.
func (r *Runner) Describe(b build.Build) (Spec, int) {
	var spec Spec
	if b.IsSource() {
		spec, _ = decodeSpec(b.Spec)
	}
	pos := 0
	if b.Status == build.Queued {
		pos = r.position(b.ID, b.ProjectID)
	}
	return spec, pos
}

// Cancel cancels a queued or running source build. The build is canceled
// when Cancel returns; a running solve is stopped (BuildKit kills its
// processes) right after. A build that already ended is returned as is.
func (r *Runner) Cancel(ctx context.Context, p auth.Principal, id string) (build.Build, error) {
	b, err := r.builds.Get(ctx, p, id)
	if err != nil {
		return build.Build{}, err
	}
	if !b.IsSource() {
		return build.Build{}, fmt.Errorf("build %q is run by its client (kiln build, depot build): stop it there: %w", id, errdefs.ErrFailedPrecondition)
	}
	if !p.CanDriveBuild(b) {
		return build.Build{}, fmt.Errorf("canceling build %q: a CI job's default role may not cancel builds; a trust policy with role %q may: %w",
			id, auth.RoleProject, errdefs.ErrPermission)
	}
	if b.Terminal() {
		return b, nil
	}
	r.unqueue(b.ID, b.ProjectID)
	b, err = r.builds.FinishSource(ctx, b.ID, build.Outcome{Result: build.Result{Status: build.Canceled, Error: "canceled"}})
	if err != nil {
		return build.Build{}, err
	}
	r.mu.Lock()
	if j, ok := r.running[id]; ok {
		j.cancel(errCanceled)
	}
	r.mu.Unlock()
	r.hub.notify(id)
	r.log.InfoContext(ctx, "source build canceled", "build_id", id, "project_id", b.ProjectID, "by", p.TokenID)
	return b, nil
}

// List lists a project's builds, newest first: created before `before`
// (zero: now), at most limit.
func (r *Runner) List(ctx context.Context, p auth.Principal, projectID, customerID string, before time.Time, limit int) ([]build.Build, error) {
	if customerID != "" {
		proj, err := r.projects.ForBuild(ctx, p, "", customerID)
		if err != nil {
			return nil, err
		}
		projectID = proj.ID
	}
	if projectID == "" && p.Kind == auth.TokenProject {
		projectID = p.ProjectID
	}
	if projectID == "" {
		return nil, fmt.Errorf("no project: give a project id or a customer id: %w", errdefs.ErrInvalid)
	}
	return r.builds.List(ctx, p, projectID, before, limit)
}

// Rebuild queues a new build with the same context, options and secrets,
// while the context is retained.
func (r *Runner) Rebuild(ctx context.Context, p auth.Principal, id string) (build.Build, error) {
	b, err := r.builds.Get(ctx, p, id)
	if err != nil {
		return build.Build{}, err
	}
	if !b.IsSource() {
		return build.Build{}, fmt.Errorf("build %q was run by its client; run it again there: %w", id, errdefs.ErrFailedPrecondition)
	}
	if p.Kind == auth.TokenBuild {
		return build.Build{}, fmt.Errorf("build tokens cannot start builds: %w", errdefs.ErrPermission)
	}
	spec, err := decodeSpec(b.Spec)
	if err != nil {
		return build.Build{}, err
	}
	if spec.GitURL != "" {
		// A git context is fetched again: the ref as given, which may
		// now name another commit.
	} else if _, err := r.usableContext(ctx, b.ProjectID, spec.ContextKey); err != nil {
		if errdefs.IsNotFound(err) {
			return build.Build{}, fmt.Errorf("the context of build %q is no longer retained; upload it again and use CreateBuild: %w", id, errdefs.ErrFailedPrecondition)
		}
		return build.Build{}, err
	}
	// Secrets are dropped when a build ends, so a rebuild has none unless
	// the original is still running.
	var secrets map[string]string
	if open, err := r.seal.open(b.ID, b.Secrets); err == nil {
		secrets = map[string]string{}
		for k, v := range open {
			secrets[k] = string(v)
		}
	}
	if len(spec.SecretIDs) > 0 && len(secrets) == 0 {
		return build.Build{}, fmt.Errorf("build %q used secrets (%s), which kiln forgets when a build ends; start a new build with CreateBuild and the secrets: %w",
			id, strings.Join(spec.SecretIDs, ", "), errdefs.ErrFailedPrecondition)
	}
	proj, err := r.store.GetProject(ctx, b.ProjectID)
	if err != nil {
		return build.Build{}, err
	}
	spec.RebuildOf = b.ID
	return r.queue(ctx, p, proj, spec, secrets)
}

// RecordGitCommit records the git commit a client build built
// (build.Service.RecordGitCommit).
func (r *Runner) RecordGitCommit(ctx context.Context, p auth.Principal, id, commit string) error {
	return r.builds.RecordGitCommit(ctx, p, id, commit)
}
