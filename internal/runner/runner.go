package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/project"
)

// Config tunes the runner; zero values take the defaults noted.
type Config struct {
	// WorkDir holds one scratch directory per running build (the fetched
	// archive and the extracted context), removed when the build ends.
	WorkDir string
	// MaxConcurrent bounds source builds running at once; 0 → 4.
	MaxConcurrent int
	// MaxPerProject bounds those of one project; 0 → 2.
	MaxPerProject int
	// MaxQueuedPerProject bounds the builds one project may have waiting;
	// CreateBuild beyond it is ResourceExhausted. 0 → 100.
	MaxQueuedPerProject int
	// MaxContextsPerProject bounds a project's retained contexts;
	// GenerateUploadURL beyond it is ResourceExhausted. 0 → 10,000.
	MaxContextsPerProject int
	// MaxContextBytesPerProject bounds the bytes of a project's retained
	// contexts (quota.go); GenerateUploadURL beyond it is
	// ResourceExhausted. 0 → 10 GiB.
	MaxContextBytesPerProject int64
	// ContextRetention: an uploaded context (and RebuildBuild with it) is
	// kept this long after its upload URL was made; 0 → 7 days.
	ContextRetention time.Duration
	// UploadTTL is the lifetime of an upload URL; 0 → 15 minutes.
	UploadTTL time.Duration
	// Archive bounds an uploaded context; Archive.CompressedBytes is also
	// the largest upload accepted (0 → archive's default, 1 GiB).
	Archive archive.Limits
	// BuilderWait bounds the wait for a stopped builder to start; 0 → 3m.
	BuilderWait time.Duration
	// RegistryHost is kiln's registry as builders reach it ("host:port").
	RegistryHost func() string
	// PushAuth are credentials for registries other than kiln's own that
	// source builds may push to (the operator's --push-auth-file).
	PushAuth []engine.RegistryCredential
	// GitPrivateHosts lets git contexts be fetched from loopback and
	// private addresses (githost.go); off, they are refused.
	GitPrivateHosts bool
	// SecretsKey seals build secrets at rest (32 bytes or more).
	SecretsKey []byte
	Logger     *slog.Logger
}

// Runner runs source builds: it keeps the queue, picks the next build in
// fair order, and drives each build from its uploaded context to a pushed
// image. The queue is in memory and rebuilt from the store at Start, so a
// restarted server resumes it.
type Runner struct {
	cfg      Config
	store    Store
	blobs    blob.Store
	builds   *build.Service
	projects *project.Service
	seal     *sealer
	hub      *hub
	log      *slog.Logger

	// base is canceled by Close; running builds derive from it.
	base context.Context
	stop context.CancelCauseFunc
	wg   sync.WaitGroup // running builds and the sweeper

	// mu guards the queue and the running set.
	mu         sync.Mutex
	queues     map[string][]queued // project id → its queued builds, oldest first
	creating   map[string]int      // project id → builds being created (counted against MaxQueuedPerProject until enqueued)
	running    map[string]*job     // build id → its job
	perProject map[string]int      // project id → its running builds
	closed     bool

	// uploadMu guards uploadLocks: per project, held while an upload URL
	// is reserved against the quota and recorded (quota.go).
	uploadMu    sync.Mutex
	uploadLocks map[string]*projectLock
}

type queued struct {
	id      string
	created time.Time
}

// job is one running build; cancel stops its solve.
type job struct {
	projectID string
	cancel    context.CancelCauseFunc
}

var (
	errShutdown = errors.New("kiln serve shut down while the build was running")
	errCanceled = errors.New("canceled")
)

// New returns a runner; Start resumes the stored queue and starts work.
func New(st Store, blobs blob.Store, builds *build.Service, projects *project.Service, cfg Config) (*Runner, error) {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4
	}
	if cfg.MaxPerProject <= 0 {
		cfg.MaxPerProject = 2
	}
	if cfg.MaxQueuedPerProject <= 0 {
		cfg.MaxQueuedPerProject = 100
	}
	if cfg.MaxContextsPerProject <= 0 {
		cfg.MaxContextsPerProject = 10_000
	}
	if cfg.MaxContextBytesPerProject <= 0 {
		cfg.MaxContextBytesPerProject = DefaultContextBytesPerProject
	}
	if cfg.ContextRetention <= 0 {
		cfg.ContextRetention = 7 * 24 * time.Hour
	}
	if cfg.UploadTTL <= 0 {
		cfg.UploadTTL = 15 * time.Minute
	}
	if cfg.BuilderWait <= 0 {
		cfg.BuilderWait = 3 * time.Minute
	}
	if cfg.Archive.CompressedBytes <= 0 {
		cfg.Archive.CompressedBytes = archive.DefaultLimits().CompressedBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RegistryHost == nil {
		cfg.RegistryHost = func() string { return "" }
	}
	seal, err := newSealer(cfg.SecretsKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("runner work dir: %w", err)
	}
	base, stop := context.WithCancelCause(context.Background())
	return &Runner{cfg: cfg, store: st, blobs: blobs, builds: builds, projects: projects, seal: seal, hub: newHub(),
		log: cfg.Logger, base: base, stop: stop,
		queues: map[string][]queued{}, creating: map[string]int{}, running: map[string]*job{}, perProject: map[string]int{}, uploadLocks: map[string]*projectLock{}}, nil
}

// Start reconciles what a previous server left behind and starts work:
// builds that were running when it stopped can't be resumed (their solve
// died with it) and fail with a message saying so; queued builds are
// queued again in their order; leftover scratch directories are removed.
// It also starts the context retention sweeper.
func (r *Runner) Start(ctx context.Context) error {
	entries, _ := os.ReadDir(r.cfg.WorkDir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(r.cfg.WorkDir, e.Name()))
	}
	for _, status := range []build.Status{build.Running, build.Pushing} {
		bs, err := r.store.ListBuildsByStatus(ctx, status)
		if err != nil {
			return err
		}
		for _, b := range bs {
			if !b.IsSource() {
				continue
			}
			msg := "interrupted: kiln serve stopped while this build was " + string(b.Status) + "; start it again with RebuildBuild"
			if _, err := r.builds.FinishSource(ctx, b.ID, build.Outcome{Result: build.Result{Status: build.Failed, Error: msg}}); err != nil {
				return err
			}
			r.log.Warn("source build interrupted by a restart", "build_id", b.ID, "project_id", b.ProjectID)
		}
	}
	bs, err := r.store.ListBuildsByStatus(ctx, build.Queued)
	if err != nil {
		return err
	}
	n := 0
	for _, b := range bs {
		if b.IsSource() {
			r.enqueue(b)
			n++
		}
	}
	if n > 0 {
		r.log.Info("source builds resumed from the queue", "count", n)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.sweep(r.base)
	}()
	return nil
}

// Close stops taking work, cancels running builds (they fail, saying the
// server shut down) and waits for them to record that, up to ctx. Queued
// builds stay queued for the next Start.
func (r *Runner) Close(ctx context.Context) {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.stop(errShutdown)
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		r.log.Warn("source builds still stopping at shutdown")
	}
}

// enqueue adds a queued build and starts what may start.
func (r *Runner) enqueue(b build.Build) {
	r.mu.Lock()
	r.queues[b.ProjectID] = append(r.queues[b.ProjectID], queued{id: b.ID, created: b.CreatedAt})
	r.mu.Unlock()
	r.dispatch()
}

// dispatch starts queued builds while there is room. Fair order: among the
// projects with queued builds and room under MaxPerProject, the one with
// the fewest running builds goes first, then the one whose next build has
// waited longest; within a project, builds start in the order they were
// created. So one project's burst cannot starve the others.
func (r *Runner) dispatch() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for !r.closed && len(r.running) < r.cfg.MaxConcurrent {
		best := pickProject(r.queues, r.perProject, r.cfg.MaxPerProject)
		if best == "" {
			return
		}
		next := r.queues[best][0]
		r.queues[best] = r.queues[best][1:]
		if len(r.queues[best]) == 0 {
			delete(r.queues, best)
		}
		ctx, cancel := context.WithCancelCause(r.base)
		r.running[next.id] = &job{projectID: best, cancel: cancel}
		r.perProject[best]++
		r.wg.Add(1)
		go r.run(ctx, next.id, best)
	}
}

// pickProject returns the project whose next build starts next ("" for
// none): see dispatch.
func pickProject(queues map[string][]queued, running map[string]int, maxPerProject int) string {
	best := ""
	for pid, q := range queues {
		if len(q) == 0 || running[pid] >= maxPerProject {
			continue
		}
		if best == "" {
			best = pid
			continue
		}
		bq := queues[best]
		switch a, b := running[pid], running[best]; {
		case a < b:
			best = pid
		case a == b && (q[0].created.Before(bq[0].created) || q[0].created.Equal(bq[0].created) && q[0].id < bq[0].id):
			best = pid
		}
	}
	return best
}

// unqueue removes a build from the queue; false if it was not queued.
func (r *Runner) unqueue(id, projectID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[projectID]
	i := slices.IndexFunc(q, func(e queued) bool { return e.id == id })
	if i < 0 {
		return false
	}
	r.queues[projectID] = slices.Delete(q, i, i+1)
	return true
}

// Queued lists the ids of a project's source builds waiting to start, in
// the order they will (the dashboard's queue). It does not authorize: the
// caller reads each build through build.Service.
func (r *Runner) Queued(projectID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.queues[projectID]))
	for _, e := range r.queues[projectID] {
		ids = append(ids, e.id)
	}
	return ids
}

// position is how many builds of the project wait ahead of a queued one,
// plus those of other projects created before it (an estimate: fair order
// may start another project's build first).
func (r *Runner) position(id, projectID string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[projectID]
	i := slices.IndexFunc(q, func(e queued) bool { return e.id == id })
	if i < 0 {
		return 0
	}
	n := i
	for pid, other := range r.queues {
		if pid == projectID {
			continue
		}
		for _, e := range other {
			if e.created.Before(q[i].created) {
				n++
			}
		}
	}
	return n
}

// run is one build's goroutine: it owns the build from queued to its end.
func (r *Runner) run(ctx context.Context, id, projectID string) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		if j, ok := r.running[id]; ok {
			j.cancel(nil)
			delete(r.running, id)
			if r.perProject[projectID]--; r.perProject[projectID] <= 0 {
				delete(r.perProject, projectID)
			}
		}
		r.mu.Unlock()
		r.dispatch()
	}()
	b, ok, err := r.builds.StartSource(ctx, id)
	if err != nil || !ok {
		if err != nil {
			r.log.Error("start source build", "build_id", id, "err", err)
		}
		return
	}
	r.hub.notify(id)
	work := filepath.Join(r.cfg.WorkDir, id)
	out := r.execute(ctx, b, work)
	if err := os.RemoveAll(work); err != nil {
		r.log.Warn("remove build scratch dir", "build_id", id, "err", err)
	}
	switch cause := context.Cause(ctx); {
	case out.Status == build.Succeeded:
		// Pushed before the cancel or shutdown arrived: it stands.
	case errors.Is(cause, errShutdown):
		out = build.Outcome{Result: build.Result{Status: build.Failed,
			Error: "interrupted: kiln serve shut down while this build was running; start it again with RebuildBuild"}}
	case errors.Is(cause, errCanceled):
		out = build.Outcome{Result: build.Result{Status: build.Canceled, Error: "canceled"}}
	}
	// The build's own context may be done; recording the end must not be.
	end, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := r.builds.FinishSource(end, id, out); err != nil {
		r.log.Error("finish source build", "build_id", id, "err", err)
	}
	r.hub.notify(id)
}
