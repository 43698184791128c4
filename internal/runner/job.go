package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	bkclient "github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/session"
	"github.com/kiln-dev/kiln/internal/steps"
	"github.com/kiln-dev/kiln/internal/units"
)

// Steps kiln itself adds to a source build's record, before BuildKit's.
const (
	stepContext = "kiln:context"
	stepBuilder = "kiln:builder"
)

// pushTokenTTL bounds the build token the builder pushes the image with.
const pushTokenTTL = 6 * time.Hour

// execute drives one running build: fetch and check the context, connect
// to the project's builders, solve and push. It returns the outcome; the
// caller records it.
func (r *Runner) execute(ctx context.Context, b build.Build, work string) build.Outcome {
	fail := func(err error) build.Outcome {
		// Errors from the disk or BuildKit may name the scratch dir: the
		// caller sees paths relative to its context only.
		msg := strings.ReplaceAll(err.Error(), filepath.Join(work, "context")+"/", "")
		msg = strings.ReplaceAll(msg, r.cfg.WorkDir, "<work>")
		return build.Outcome{Result: build.Result{Status: build.Failed, Error: msg}}
	}
	spec, err := decodeSpec(b.Spec)
	if err != nil {
		return fail(err)
	}
	secrets, err := r.seal.open(b.ID, b.Secrets)
	if err != nil {
		return fail(fmt.Errorf("build secrets: %w", err))
	}
	rec := r.newRecorder(b.ID)
	defer rec.close()

	if err := os.MkdirAll(work, 0o700); err != nil {
		return fail(fmt.Errorf("scratch directory: %w", err))
	}
	root, dockerfile := "", spec.Dockerfile
	if spec.GitURL != "" {
		// A git context is fetched by the builder (engine/git.go): nothing
		// of it passes through this server. Its host is checked against
		// the builders' network policy first (githost.go).
		rec.Begin(stepContext, "[kiln] check the git context's host")
		proj, err := r.store.GetProject(ctx, b.ProjectID)
		if err != nil {
			// The store's own error is for the server log, not the build.
			r.log.ErrorContext(ctx, "source build: read project", "build_id", b.ID, "project_id", b.ProjectID, "err", err)
			err = fmt.Errorf("project %s could not be read; retry the build: %w", b.ProjectID, errdefs.ErrUnavailable)
		} else {
			err = r.checkGitHost(ctx, proj, spec.GitURL)
		}
		rec.End(stepContext, err)
		if err != nil {
			return fail(err)
		}
	} else {
		root = filepath.Join(work, "context")
		rec.Begin(stepContext, "[kiln] fetch and check the build context")
		stats, err := r.fetchContext(ctx, b, spec, work, root)
		if err != nil {
			rec.End(stepContext, err)
			return fail(fmt.Errorf("build context: %w", err))
		}
		rec.Log(stepContext, fmt.Sprintf("%d entries, %s, sha256:%s\n", stats.Entries, units.Bytes(stats.Bytes), stats.SHA256))
		if dockerfile, err = findDockerfile(root, spec.Dockerfile); err != nil {
			rec.End(stepContext, err)
			return fail(err)
		}
		rec.End(stepContext, nil)
	}

	refs, err := refs(r.cfg.RegistryHost(), b.ProjectID, b.ID, spec.Tags, r.pushHosts())
	if err != nil {
		return fail(err)
	}
	req, err := r.prepare(ctx, b, spec, root, dockerfile, refs, secrets)
	if err != nil {
		return fail(err)
	}
	defer req.Close()

	rec.Begin(stepBuilder, "[kiln] start the project's builder ("+strings.Join(spec.Platforms, ", ")+")")
	bs, err := session.Connect(ctx, sourceAcquirer{r, b}, req.BuilderPlatforms(), session.ConnectOptions{Wait: r.cfg.BuilderWait})
	rec.End(stepBuilder, err)
	if err != nil {
		return fail(err)
	}
	defer bs.Close()

	resp, err := session.Solve(ctx, bs, req, io.Discard, rec.Observe)
	if err != nil {
		o := fail(err)
		o.GitCommit = req.GitCommit()
		return o
	}
	return build.Outcome{Result: build.Result{Status: build.Succeeded}, ImageRefs: refs,
		ImageDigest: resp.ExporterResponse["containerimage.digest"], GitCommit: req.GitCommit()}
}

// fetchContext copies the build's context from blob storage into work,
// checks its size and digest before reading a byte of it as an archive,
// then extracts it safely into root.
func (r *Runner) fetchContext(ctx context.Context, b build.Build, spec Spec, work, root string) (archive.Stats, error) {
	c, err := r.store.GetContext(ctx, spec.ContextKey)
	if err != nil || c.ProjectID != b.ProjectID {
		return archive.Stats{}, fmt.Errorf("context %q not found: %w", spec.ContextKey, errdefs.ErrNotFound)
	}
	if time.Now().After(c.ExpiresAt) {
		return archive.Stats{}, fmt.Errorf("context %q expired at %s; upload it again: %w", c.Key, c.ExpiresAt.Format(time.RFC3339), errdefs.ErrFailedPrecondition)
	}
	rc, info, err := r.blobs.Open(ctx, c.BlobKey)
	if errdefs.IsNotFound(err) {
		return archive.Stats{}, fmt.Errorf("context %q was never uploaded: PUT it to the upload URL first: %w", c.Key, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return archive.Stats{}, fmt.Errorf("reading context %q from storage: %w", c.Key, err)
	}
	defer rc.Close()
	max := r.cfg.Archive.CompressedBytes
	if info.Size > max {
		return archive.Stats{}, fmt.Errorf("the upload is %d bytes; this server accepts at most %d: %w", info.Size, max, errdefs.ErrInvalid)
	}
	if c.Size > 0 && info.Size != c.Size {
		return archive.Stats{}, fmt.Errorf("the upload is %d bytes but %d were declared: upload it again: %w", info.Size, c.Size, errdefs.ErrInvalid)
	}
	tmp := filepath.Join(work, "context.archive")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return archive.Stats{}, err
	}
	defer f.Close()
	sum, n, err := archive.CopyHashed(f, rc, max)
	if err != nil {
		return archive.Stats{}, fmt.Errorf("reading the upload: %w", err)
	}
	if c.Size > 0 && n != c.Size {
		return archive.Stats{}, fmt.Errorf("the upload is %d bytes but %d were declared: upload it again: %w", n, c.Size, errdefs.ErrInvalid)
	}
	if c.SHA256 != "" && !strings.EqualFold(sum, c.SHA256) {
		return archive.Stats{}, fmt.Errorf("the upload's sha256 is %s but %s was declared: it was corrupted or replaced; upload it again: %w", sum, c.SHA256, errdefs.ErrInvalid)
	}
	r.settleOne(ctx, c, n)
	if c.SHA256 == "" {
		// No digest was declared: the first build's becomes the context's,
		// so a rebuild reads what this build reads or fails.
		pinned, err := r.store.PinContextDigest(ctx, c.Key, sum)
		if err != nil {
			return archive.Stats{}, fmt.Errorf("record the context's digest: %w", err)
		}
		if !strings.EqualFold(pinned, sum) {
			return archive.Stats{}, fmt.Errorf("the upload's sha256 is %s but an earlier build of this context read sha256:%s: it was replaced since; upload it again: %w", sum, pinned, errdefs.ErrInvalid)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return archive.Stats{}, err
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		return archive.Stats{}, err
	}
	stats, err := archive.Extract(f, root, r.cfg.Archive, archive.Policy{RejectSpecialBits: true})
	if err != nil {
		return archive.Stats{}, err
	}
	return stats, nil
}

// findDockerfile returns the absolute path of the Dockerfile inside the
// extracted context. The context keeps its symlinks as they are, wherever
// they point, so the path is resolved with archive.ResolveInRoot, which
// never follows a link out of the context.
func findDockerfile(root, rel string) (string, error) {
	p, err := archive.ResolveInRoot(root, filepath.ToSlash(rel))
	if err != nil {
		return "", fmt.Errorf("dockerfile %q: %w", rel, err)
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return "", fmt.Errorf("dockerfile %q is not in the build context: %w", rel, errdefs.ErrInvalid)
	}
	if err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("dockerfile %q is not a regular file: %w", rel, errdefs.ErrInvalid)
	}
	return p, nil
}

// prepare turns the spec into an engine request that pushes to refs.
func (r *Runner) prepare(ctx context.Context, b build.Build, spec Spec, root, dockerfile string, refs []string, secrets map[string][]byte) (*engine.Request, error) {
	breq, err := spec.request(root, dockerfile, secrets)
	if err != nil {
		return nil, err
	}
	req, err := engine.Prepare(breq, engine.IO{Progress: "quiet"})
	if err != nil {
		return nil, err
	}
	token, err := r.builds.PushToken(ctx, b, pushTokenTTL)
	if err != nil {
		req.Close()
		return nil, err
	}
	creds := append([]engine.RegistryCredential{{Host: r.cfg.RegistryHost(), Username: "x-token", Password: token}}, r.cfg.PushAuth...)
	if err := req.AddSave(refs, creds); err != nil {
		req.Close()
		return nil, err
	}
	req.ServerSide()
	return req, nil
}

func (r *Runner) pushHosts() []string {
	var hosts []string
	for _, c := range r.cfg.PushAuth {
		hosts = append(hosts, c.Host)
	}
	return hosts
}

// sourceAcquirer hands a source build its builders: the build service's
// ConnectSource, with a certificate for this build.
type sourceAcquirer struct {
	r *Runner
	b build.Build
}

func (a sourceAcquirer) Acquire(ctx context.Context, pl platform.Platform) (session.Lease, error) {
	conn, err := a.r.builds.ConnectSource(ctx, a.b, pl.String())
	if err != nil {
		return session.Lease{}, fmt.Errorf("builder for %s: %w", pl, err)
	}
	if !conn.Ready {
		return session.Lease{Wait: time.Duration(conn.WaitMs) * time.Millisecond}, nil
	}
	return session.Lease{Ready: true, Conn: engine.Connection{Endpoint: conn.Addr, ServerName: conn.Endpoint.ServerName,
		CertPEM: conn.CertPEM, KeyPEM: conn.KeyPEM, CACertPEM: conn.Endpoint.CACertPEM}}, nil
}

// recorder stores what a source build shows as it runs — BuildKit's
// status and kiln's own steps, folded by a [steps.Recorder] — every
// 200 ms, waking the build's watchers after each write. The first sign of
// the image export marks the build pushing.
type recorder struct {
	*steps.Recorder
	r       *Runner
	buildID string
	stopc   chan struct{}
	done    chan struct{}
	logs    steps.LogBudget // what of the build's logs is stored

	mu      sync.Mutex
	started map[string]int // digest → its place in the order steps started
}

func (r *Runner) newRecorder(buildID string) *recorder {
	rec := &recorder{Recorder: steps.NewRecorder(true), r: r, buildID: buildID, stopc: make(chan struct{}), done: make(chan struct{}),
		started: map[string]int{}}
	go rec.loop()
	return rec
}

// Begin starts a step of kiln's own.
func (rec *recorder) Begin(digest, name string) {
	rec.noteStarted(digest)
	rec.Recorder.Begin(digest, name)
}

// Observe records a status update from BuildKit, noting the order its
// steps start in: the order of the updates, since BuildKit gives the cache
// hits of one update the same start time.
func (rec *recorder) Observe(st *bkclient.SolveStatus) {
	if st != nil {
		for _, v := range st.Vertexes {
			if v != nil && v.Digest != "" && (v.Started != nil || v.Completed != nil || v.Error != "") {
				rec.noteStarted(v.Digest.String())
			}
		}
	}
	rec.Recorder.Observe(st)
}

func (rec *recorder) noteStarted(digest string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if _, ok := rec.started[digest]; !ok {
		rec.started[digest] = len(rec.started)
	}
}

// startOrder is a copy of the order steps started in.
func (rec *recorder) startOrder() map[string]int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return maps.Clone(rec.started)
}

func (rec *recorder) loop() {
	defer close(rec.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-rec.stopc:
			rec.flush()
			return
		case <-t.C:
			rec.flush()
		}
	}
}

func (rec *recorder) flush() {
	steps, logs, exportStarted := rec.Drain()
	if len(steps) == 0 && len(logs) == 0 && !exportStarted {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rec.r.builds.StoreSteps(ctx, rec.buildID, storeSteps(steps, rec.startOrder()), build.LogLinesOf(rec.logs.Take(logs))); err != nil {
		rec.r.log.Warn("store build steps", "build_id", rec.buildID, "err", err)
	}
	if exportStarted {
		if err := rec.r.builds.SetPushing(ctx, rec.buildID, rec.r.self); err != nil {
			rec.r.log.Warn("mark build pushing", "build_id", rec.buildID, "err", err)
		}
	}
	rec.r.hub.notify(rec.buildID)
}

// close stores what is pending and stops the recorder.
func (rec *recorder) close() {
	close(rec.stopc)
	<-rec.done
}

// storeSteps is what a flush stores of the steps that changed: only the
// ones that started (or ended), in the order they started (started: each
// step's place in it). BuildKit lists a solve's vertices up front, from
// the last stage back, and gives the cache hits of one update the same
// start time: stored as first listed, or by start time, a step's place
// (the store keeps the first one) would not be the order it ran.
func storeSteps(recorded []steps.Step, started map[string]int) []build.Step {
	recorded = slices.DeleteFunc(slices.Clone(recorded), func(s steps.Step) bool {
		_, ok := started[s.Digest]
		return !ok
	})
	slices.SortStableFunc(recorded, func(a, b steps.Step) int { return cmp.Compare(started[a.Digest], started[b.Digest]) })
	out := make([]build.Step, len(recorded))
	for i, s := range recorded {
		// An end before the start (wall clocks that stepped back, status
		// updates merged from two sources) is stored as no time taken, so
		// no reader shows a negative duration.
		if !s.Completed.IsZero() && s.Completed.Before(s.Started) {
			s.Completed = s.Started
		}
		out[i] = build.Step{Digest: s.Digest, Name: s.Name, Cached: s.Cached, StartedAt: s.Started, CompletedAt: s.Completed, Error: s.Error}
	}
	return out
}
