package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	// SecretsKey seals build secrets at rest (32 bytes or more). Replicas
	// sharing a store must share it: a build runs on any of them.
	SecretsKey []byte
	// Cluster is the replicas sharing the store (internal/cluster); nil
	// for a runner alone on its store. See Runner for what it changes.
	Cluster Cluster
	// SyncInterval is how often the runner reads the store's queue and
	// checks its running builds there (sync); 0 → 1 s.
	SyncInterval time.Duration
	Logger       *slog.Logger
}

// Cluster is what the runner needs of the replicas sharing its store
// (*cluster.Cluster): its own replica id, whether it is fenced, and store
// locks.
type Cluster interface {
	Self() string
	// Fenced reports whether this replica has not beaten for so long that
	// the others may take it for dead: it claims no build until it beats
	// again (dispatch).
	Fenced() bool
	// Exclusive runs fn while this replica holds the named lock; ran is
	// false, without running fn, while another holder has it.
	Exclusive(ctx context.Context, name string, fn func(ctx context.Context) error) (ran bool, err error)
}

// Runner runs source builds: it keeps the queue, picks the next build in
// fair order, and drives each build from its uploaded context to a pushed
// image.
//
// The store is the queue; each runner keeps a copy in memory, read again
// from the store every SyncInterval (sync.go), so replicas sharing a store
// all see every queued build, whichever replica created it. A build runs
// on the replica that claims it first (build.Service.StartSource: one
// row-locked update, stamping the replica), so it runs exactly once;
// the others drop it. MaxConcurrent bounds the builds running on this
// replica; MaxPerProject bounds a project's builds running on all of them
// (counted in the store under the project's claim lock). A build canceled
// or taken over through another replica is noticed by the sync and its
// solve stopped within SyncInterval; a dead replica's builds are queued
// again (SettleDead).
type Runner struct {
	cfg  Config
	self string // this replica's id; "" without a Cluster
	// exec drives one claimed build to its outcome: execute, or a test's fake.
	exec     func(ctx context.Context, b build.Build, work string) build.Outcome
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

	// wake asks the sync loop for a sync now (buffered: one is enough).
	wake chan struct{}
	// claimMu makes this replica's claims take turns (claim).
	claimMu sync.Mutex

	// mu guards the queue and the running set.
	mu         sync.Mutex
	queues     map[string][]queued // project id → its queued builds, oldest first
	creating   map[string]int      // project id → builds being created (counted against MaxQueuedPerProject until enqueued)
	running    map[string]*job     // build id → its job
	perProject map[string]int      // project id → its running builds
	// elsewhere counts each project's source builds running on other
	// replicas, as of the last sync; held marks projects whose claim was
	// put off (their lock was taken, or they were at MaxPerProject in the
	// store) until the next sync.
	elsewhere map[string]int
	held      map[string]bool
	closed    bool

	// uploadMu guards uploadLocks: per project, held while an upload URL
	// is reserved against the quota and recorded (quota.go).
	uploadMu    sync.Mutex
	uploadLocks map[string]*projectLock
}

type queued struct {
	id      string
	created time.Time
	added   time.Time // when it was put in this queue (sync keeps newer entries than its read)
}

// job is one running build; cancel stops its solve.
type job struct {
	projectID string
	cancel    context.CancelCauseFunc
	// claimed: StartSource gave the build to this replica; until then the
	// job only tries to claim it.
	claimed bool
}

var (
	errShutdown = errors.New("kiln serve shut down while the build was running")
	errCanceled = errors.New("canceled")
	// errEnded: the build ended through another replica (or another part
	// of kiln) while it ran here.
	errEnded = errors.New("the build ended elsewhere")
	// errTakenOver: another replica runs the build now (this one was
	// taken for dead); its end is that replica's to record.
	errTakenOver = errors.New("the build was taken over by another replica")
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
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	seal, err := newSealer(cfg.SecretsKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("runner work dir: %w", err)
	}
	base, stop := context.WithCancelCause(context.Background())
	r := &Runner{cfg: cfg, store: st, blobs: blobs, builds: builds, projects: projects, seal: seal, hub: newHub(),
		log: cfg.Logger, base: base, stop: stop, wake: make(chan struct{}, 1),
		queues: map[string][]queued{}, creating: map[string]int{}, running: map[string]*job{}, perProject: map[string]int{},
		elsewhere: map[string]int{}, held: map[string]bool{}, uploadLocks: map[string]*projectLock{}}
	if cfg.Cluster != nil {
		r.self = cfg.Cluster.Self()
	}
	r.exec = r.execute
	return r, nil
}

// Start reconciles what a previous run of this replica left behind and
// starts work: builds it was running when it stopped can't be resumed
// (their solve died with it) and fail with a message saying so (those of
// other replicas are theirs: SettleDead, if they died); queued builds are
// read from the store and run in their order; leftover scratch
// directories are removed. It also starts the sync loop and the context
// retention sweeper.
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
			// "": claimed before replicas were recorded, by this server.
			if !b.IsSource() || r.cfg.Cluster != nil && b.Replica != r.self && b.Replica != "" {
				continue
			}
			msg := "interrupted: kiln serve stopped while this build was " + string(b.Status) + "; start it again with RebuildBuild"
			// Only while it is still this replica's: taken for dead while
			// it restarted, another one may have queued it again and run
			// it since the listing.
			out := build.Outcome{Result: build.Result{Status: build.Failed, Error: msg}, Replica: b.Replica}
			if _, err := r.builds.FinishSource(ctx, b.ID, out); err != nil {
				return err
			}
			r.log.Warn("source build interrupted by a restart", "build_id", b.ID, "project_id", b.ProjectID)
		}
	}
	if err := r.sync(ctx); err != nil {
		return err
	}
	r.mu.Lock()
	n := 0
	for _, q := range r.queues {
		n += len(q)
	}
	r.mu.Unlock()
	if n > 0 {
		r.log.Info("source builds queued in the store", "count", n)
	}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.syncLoop(r.base)
	}()
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
	r.insertLocked(b.ProjectID, queued{id: b.ID, created: b.CreatedAt, added: time.Now()})
	r.mu.Unlock()
	r.dispatch()
}

// insertLocked puts e in its project's queue in creation order, unless it
// is there already. r.mu is held.
func (r *Runner) insertLocked(projectID string, e queued) {
	q := r.queues[projectID]
	if slices.ContainsFunc(q, func(x queued) bool { return x.id == e.id }) {
		return
	}
	i, _ := slices.BinarySearchFunc(q, e, func(x, e queued) int {
		if c := x.created.Compare(e.created); c != 0 {
			return c
		}
		return strings.Compare(x.id, e.id)
	})
	r.queues[projectID] = slices.Insert(q, i, e)
}

// dispatch starts queued builds while there is room. Fair order: among the
// projects with queued builds and room under MaxPerProject, the one with
// the fewest running builds (here and, as of the last sync, on other
// replicas) goes first, then the one whose next build has waited longest;
// within a project, builds start in the order they were created. So one
// project's burst cannot starve the others.
//
// A fenced replica (Cluster.Fenced) starts nothing: the others may take it
// for dead and queue its builds again, so a build it claimed now could run
// twice. Its running builds go on: most fences are a slow or briefly
// unreachable database, over before anyone takes the replica for dead, and
// a build that was taken over is stopped by the sync once it reads the
// store again (its end, recorded only while it is still this replica's,
// changes nothing: build.Outcome.Replica).
func (r *Runner) dispatch() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for !r.closed && len(r.running) < r.cfg.MaxConcurrent && !r.fenced() {
		load := make(map[string]int, len(r.queues))
		for pid := range r.queues {
			load[pid] = r.perProject[pid] + r.elsewhere[pid]
			if r.held[pid] {
				load[pid] = r.cfg.MaxPerProject
			}
		}
		best := pickProject(r.queues, load, r.cfg.MaxPerProject)
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
		go r.run(ctx, next, best)
	}
}

// fenced reports whether this replica must claim no build now (dispatch).
func (r *Runner) fenced() bool { return r.cfg.Cluster != nil && r.cfg.Cluster.Fenced() }

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

// run is one build's goroutine: it claims the build, and once claimed
// owns it to its end.
func (r *Runner) run(ctx context.Context, next queued, projectID string) {
	id := next.id
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
	b, ok, later, err := r.claim(ctx, id, projectID)
	switch {
	case err != nil:
		// The next sync queues it again here if it is still queued.
		r.log.Error("claim source build", "build_id", id, "err", err)
		return
	case later:
		r.mu.Lock()
		r.insertLocked(projectID, queued{id: id, created: next.created, added: time.Now()})
		r.held[projectID] = true
		r.mu.Unlock()
		return
	case !ok:
		return // canceled while it waited, or another replica runs it
	}
	r.mu.Lock()
	if j, ok := r.running[id]; ok {
		j.claimed = true
	}
	r.mu.Unlock()
	r.hub.notify(id)
	work := filepath.Join(r.cfg.WorkDir, id)
	out := r.exec(ctx, b, work)
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
	case errors.Is(cause, errTakenOver):
		r.log.Warn("source build taken over by another replica; stopped here", "build_id", id, "project_id", projectID)
	}
	// Recorded only while the build is still this replica's: one taken
	// over runs elsewhere, and its end is that run's.
	out.Replica = r.self
	// The build's own context may be done; recording the end must not be.
	end, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := r.builds.FinishSource(end, id, out); err != nil {
		r.log.Error("finish source build", "build_id", id, "err", err)
	}
	r.hub.notify(id)
}
