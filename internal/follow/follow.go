// Package follow records every build's steps from the builder itself.
// kiln's gateway reports each BuildKit Solve a client makes (the build,
// the builder, the solve's ref); a Follower then streams BuildKit's
// Control.Status of that ref from the builder's socket through a
// [steps.Recorder] into the build's stored steps and logs, whatever the
// client is (kiln build, the depot CLI, depot-go, plain buildctl or
// buildx) and whatever it reports itself.
//
// While a build is followed, the builder is the authority for its
// BuildKit vertices and their logs: the build service asks [Following]
// and keeps of the client's reports only what the builder cannot show
// (see build.Config.Followed).
//
// Source builds are skipped: kiln's runner records them from its own
// solve's status.
//
// The package knows no transport beyond BuildKit's client and depends on
// no store: it is handed a function to store with.
package follow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	controlapi "github.com/moby/buildkit/api/services/control"
	bkclient "github.com/moby/buildkit/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
	"github.com/kiln-dev/kiln/internal/steps"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// Config configures a Follower. Lookup and Store are required.
type Config struct {
	// Lookup returns how to reach the builder with the TLS server name
	// serverName (the gateway's Builders.Lookup).
	Lookup func(serverName string) (projectID string, backend engine.Connection, ok bool)
	// Store records steps and log lines of a build (build.Service.StoreSteps).
	Store func(ctx context.Context, buildID string, steps []build.Step, logs []build.LogLine) error
	// Platform returns the platform of the builder named serverName
	// (builder.Fleet.PlatformOf); nil leaves platforms out of step names
	// (see Solve).
	Platform func(serverName string) string
	// Skip reports builds recorded some other way (source builds); nil
	// skips none. It is asked once per build, off the gateway's path.
	Skip func(ctx context.Context, buildID string) bool
	// MaxLogBytes bounds the log bytes stored per build; past it one
	// "[kiln] log truncated" line is stored and no more. 0 → 16 MiB.
	MaxLogBytes int
	// Grace is how long a build's streams may still drain after it ends
	// (Ended); 0 → 10s.
	Grace time.Duration
	// Flush is how often what was observed is stored; 0 → 200ms.
	Flush  time.Duration
	Logger *slog.Logger // nil → discard
}

// DefaultGrace is Config.Grace's default: after it, an ended build's
// steps are all stored.
const DefaultGrace = 10 * time.Second

// endedMemory is how long a build is remembered as ended after Ended. The
// gateway closes a build's connections when it ends, or at its next
// recheck (15 s) when it did not hear; a Solve later than that is not
// expected even from a slow connection.
const endedMemory = 5 * time.Minute

// maxRefs bounds the solves followed per build (a bake of many targets
// is many solves, one per target and platform: a few hundred at most);
// later ones are not followed. Each followed solve costs a goroutine and a
// Status stream on the builder for as long as the build lives.
const maxRefs = 1024

// Follower follows builds' solves on their builders. It is safe for
// concurrent use. Every goroutine it starts ends when its Status stream
// ends, when its build ended Grace ago, or at Close.
type Follower struct {
	cfg Config
	log *slog.Logger

	// mu guards builds, ended and closed.
	mu     sync.Mutex
	builds map[string]*followed
	// ended are the builds Ended in the last endedMemory: a Solve of one
	// (from a connection that outlived the build's end) is ignored rather
	// than make a build that would never end again.
	ended  map[string]struct{}
	closed bool
	wg     sync.WaitGroup // every stream goroutine
}

// followed is one build being followed.
type followed struct {
	id     string
	ctx    context.Context // ends Grace after the build ends, or at Close
	cancel context.CancelFunc
	refs   map[string]bool // solves followed; guarded by Follower.mu
	// skip is Config.Skip's answer for the build, asked by its first solve
	// and kept for the others (a bake's hundreds of solves ask once); nil
	// when Config.Skip is.
	skip  func() bool
	ended bool // Ended was called; guarded by Follower.mu
	// covering counts the solves whose steps come from the builder:
	// started, and not given up before the builder said anything (see
	// failed). Guarded by Follower.mu.
	covering int

	// solves are the build's solves being or having been followed; multi
	// holds the labels whose solves are on two platforms or more. Guarded
	// by Follower.mu.
	solves []*solve
	multi  map[string]bool
	// owner is the solve each step (by digest) belongs to: the first to
	// report it. A later solve of the same vertex (a bake target solved
	// again to export it as another's context, the same stage on a second
	// builder) is not a second step, and its "cached" must not overwrite
	// the first solve's work. Guarded by Follower.mu.
	owner map[string]*solve

	// logs is the build's log budget, shared by its solves.
	logs steps.LogBudget
}

// solve is one followed solve: its recorder, the label its client gave
// it and its builder's platform.
type solve struct {
	rec             *steps.Recorder
	label, platform string
	// storeMu serializes storing rec, so a renaming (see Solve) and the
	// stream's own flushes do not interleave.
	storeMu sync.Mutex
	prefix  string // what the stored names carry; under storeMu
}

// New returns a Follower.
func New(cfg Config) (*Follower, error) {
	if cfg.Lookup == nil || cfg.Store == nil {
		return nil, fmt.Errorf("follow: Lookup and Store are required: %w", errdefs.ErrInvalid)
	}
	if cfg.MaxLogBytes <= 0 {
		cfg.MaxLogBytes = steps.DefaultMaxLogBytes
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Flush <= 0 {
		cfg.Flush = 200 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Follower{cfg: cfg, log: log, builds: map[string]*followed{}, ended: map[string]struct{}{}}, nil
}

// Solve starts following a solve of build buildID with ref on the builder
// named serverName: the gateway's OnSolve. It returns at once; from now
// on, Following(buildID) is true (see there).
//
// Step names read as kiln's own display shows them: with the label the
// client gave the solve (kiln bake: the target, "[app 2/3] RUN …"), and,
// when the label's solves run on builders of two platforms or more, with
// each one's platform ("[app linux/arm64 2/3] RUN …"). When a second
// platform appears, the steps stored before are renamed.
//
// A ref not of BuildKit's form (steps.ValidSolveRef) is ignored, and so are the
// refs of a build past its first maxRefs.
func (f *Follower) Solve(buildID, projectID, serverName, ref, label string) {
	if !steps.ValidSolveRef(ref) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	if _, ended := f.ended[buildID]; ended {
		return
	}
	b := f.builds[buildID]
	if b == nil {
		ctx, cancel := context.WithCancel(context.Background())
		b = &followed{id: buildID, ctx: ctx, cancel: cancel, refs: map[string]bool{}, multi: map[string]bool{}, owner: map[string]*solve{},
			logs: steps.LogBudget{Max: f.cfg.MaxLogBytes}}
		if skip := f.cfg.Skip; skip != nil {
			b.skip = sync.OnceValue(func() bool { return skip(ctx, buildID) })
		}
		f.builds[buildID] = b
	}
	if b.ended || b.refs[ref] || len(b.refs) >= maxRefs {
		return
	}
	b.refs[ref] = true
	b.covering++
	sv := &solve{rec: steps.NewRecorder(true), label: label}
	if f.cfg.Platform != nil {
		sv.platform = f.cfg.Platform(serverName)
	}
	for _, o := range b.solves {
		if o.label != label || o.platform == sv.platform || sv.platform == "" || o.platform == "" || b.multi[label] {
			continue
		}
		// Now two platforms: the label's steps stored so far are named
		// again with their platform (a stream still running does it at
		// its next flush; this covers those that ended).
		b.multi[label] = true
		for _, o := range b.solves {
			if o.label == label {
				f.wg.Add(1)
				go func() {
					defer f.wg.Done()
					f.store(b, o, f.log.With("build_id", buildID))
				}()
			}
		}
	}
	b.solves = append(b.solves, sv)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.follow(b, sv, projectID, serverName, ref)
	}()
}

// own keeps of steps and lines those that belong to sv (see owner).
func (f *Follower) own(b *followed, sv *solve, recorded []steps.Step, lines []steps.LogLine) ([]steps.Step, []steps.LogLine) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mine := func(digest string) bool {
		o, ok := b.owner[digest]
		if !ok {
			b.owner[digest], o = sv, sv
		}
		return o == sv
	}
	var keptSteps []steps.Step
	for _, st := range recorded {
		if mine(st.Digest) {
			keptSteps = append(keptSteps, st)
		}
	}
	var keptLines []steps.LogLine
	for _, l := range lines {
		if mine(l.Digest) {
			keptLines = append(keptLines, l)
		}
	}
	return keptSteps, keptLines
}

// prefix is what the names of sv's steps carry (see Solve).
func (f *Follower) prefix(b *followed, sv *solve) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.multi[sv.label] {
		return strings.TrimSpace(sv.label + " " + sv.platform)
	}
	return sv.label
}

// Following reports whether the build's solves are followed on the
// builder: its BuildKit steps and logs come from there. It is true from
// the first Solve until the build has ended, unless every solve's stream
// failed before the builder said anything (the builder was unreachable):
// then what the client reports is all kiln has.
func (f *Follower) Following(buildID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.builds[buildID]
	return b != nil && b.covering > 0
}

// failed records that a solve's stream gave up before the builder said
// anything: it covers nothing.
func (f *Follower) failed(b *followed) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b.covering--
}

// Ended tells the follower that the build ended: its streams get Grace to
// drain what the builder still sends, then stop, and the build is
// forgotten. Solves of it from now on, for endedMemory, are ignored.
func (f *Follower) Ended(buildID string) {
	f.mu.Lock()
	if _, ended := f.ended[buildID]; ended {
		f.mu.Unlock()
		return
	}
	f.ended[buildID] = struct{}{}
	b := f.builds[buildID]
	if b != nil {
		b.ended = true
	}
	f.mu.Unlock()
	time.AfterFunc(endedMemory, func() {
		f.mu.Lock()
		delete(f.ended, buildID)
		f.mu.Unlock()
	})
	if b == nil {
		return
	}
	time.AfterFunc(f.cfg.Grace, func() {
		b.cancel()
		f.mu.Lock()
		if f.builds[buildID] == b {
			delete(f.builds, buildID)
		}
		f.mu.Unlock()
	})
}

// Close stops every stream and waits for them (each stores what it had).
func (f *Follower) Close() {
	f.mu.Lock()
	f.closed = true
	for _, b := range f.builds {
		b.cancel()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// follow streams one solve's status into the build's steps until the
// stream ends or the build's context does.
func (f *Follower) follow(b *followed, sv *solve, projectID, serverName, ref string) {
	ctx := b.ctx
	log := f.log.With("build_id", b.id, "project_id", projectID, "builder", serverName, "ref", ref)
	if b.skip != nil && b.skip() {
		f.failed(b)
		return
	}
	_, backend, ok := f.cfg.Lookup(serverName)
	if !ok {
		log.Warn("follow build: builder is gone")
		f.failed(b)
		return
	}
	c, err := retry.Value(ctx, retry.Dial, func(ctx context.Context) (*bkclient.Client, error) {
		return engine.Dial(ctx, backend)
	})
	if err != nil {
		log.Warn("follow build: builder unreachable; its steps are what the client reports", "err", err)
		f.failed(b)
		return
	}
	defer c.Close()

	done := make(chan struct{})
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		ticker.Run(done, f.cfg.Flush, func(time.Time, time.Duration) { f.store(b, sv, log) })
		f.store(b, sv, log)
	}()
	received, err := f.stream(ctx, c.ControlClient(), ref, sv.rec)
	close(done)
	<-stored
	if !received {
		f.failed(b)
	}
	if err != nil && ctx.Err() == nil {
		log.Warn("follow build: status stream ended", "err", err)
	}
}

// stream reads Control.Status(ref) into rec until it ends. The builder
// may not know the ref yet (the solve is just starting: it waits 6 s,
// then says NotFound): that is tried again while nothing was received.
// A stream cut after it began is not reopened, since a new one would
// replay every log line already stored. received says whether the
// builder sent anything.
func (f *Follower) stream(ctx context.Context, cc controlapi.ControlClient, ref string, rec *steps.Recorder) (received bool, err error) {
	policy := retry.Policy{Attempts: 5, Delay: 500 * time.Millisecond, MaxDelay: 4 * time.Second,
		Retryable: func(err error) bool { return !received && status.Code(err) == codes.NotFound }}
	err = retry.Do(ctx, policy, func(ctx context.Context) error {
		st, err := cc.Status(ctx, &controlapi.StatusRequest{Ref: ref})
		if err != nil {
			return err
		}
		for {
			resp, err := st.Recv()
			if err != nil {
				if received && status.Code(err) == codes.NotFound {
					return fmt.Errorf("status stream: %s", err.Error())
				}
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			received = true
			rec.Observe(bkclient.NewSolveStatus(resp))
		}
	})
	return received, err
}

// store writes what sv's recorder observed since the last call, within
// the build's log budget, its step names with the solve's prefix. When the
// prefix changed (a second platform appeared), every step of the solve is
// written again, so that those stored before are renamed too.
func (f *Follower) store(b *followed, sv *solve, log *slog.Logger) {
	sv.storeMu.Lock()
	defer sv.storeMu.Unlock()
	recorded, lines, _ := sv.rec.Drain()
	prefix := f.prefix(b, sv)
	if prefix != sv.prefix {
		sv.prefix, recorded = prefix, sv.rec.Steps()
	}
	recorded, lines = f.own(b, sv, recorded, lines)
	if len(recorded) == 0 && len(lines) == 0 {
		return
	}
	logs := build.LogLinesOf(b.logs.Take(lines))
	out := make([]build.Step, len(recorded))
	for i, s := range recorded {
		if prefix != "" && s.Name != "" {
			s.Name = engine.PlatformVertexName(prefix, s.Name)
		}
		out[i] = build.Step{Digest: s.Digest, Name: s.Name, Cached: s.Cached, StartedAt: s.Started, CompletedAt: s.Completed, Error: s.Error}
	}
	// Not the build's context: what was observed is stored even as the
	// build's streams are being stopped.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.cfg.Store(ctx, b.id, out, logs); err != nil {
		log.Warn("follow build: store steps", "err", err)
	}
}
