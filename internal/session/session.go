// Package session is one build's conversation with its builders, the same
// for every kind of client: acquire a builder for each platform the build
// needs (waiting while it starts), dial it with kiln's one dial policy
// (transient errors are retried before the solve, never after), solve, and
// record the steps through one [steps.Recorder].
//
// Who hands out builders differs, and is an [Acquirer]: `kiln build`,
// `kiln bake` and the Go SDK ask kiln's API ([Remote]); the server's
// source-build runner asks its build service directly.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/moby/buildkit/client"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/retry"
)

// An Acquirer hands out a build's builders.
type Acquirer interface {
	// Acquire asks once for the build's builder of platform b (linux/amd64
	// or linux/arm64). A builder still starting is a Lease that is not
	// Ready, with how long to wait before asking again.
	Acquire(ctx context.Context, b platform.Platform) (Lease, error)
}

// Lease is an answer to [Acquirer.Acquire].
type Lease struct {
	Ready bool
	Wait  time.Duration // when not Ready: ask again after this long
	Conn  engine.Connection
}

// ConnectOptions tune [Connect].
type ConnectOptions struct {
	// Wait bounds how long a builder may take to start.
	Wait time.Duration
	// Hint is added to the error when a builder does not start in time
	// (what the caller can do about it).
	Hint string
	// Waiting, when set, is called once per builder that is not ready at
	// the first answer.
	Waiting func(b platform.Platform)
	// Dial is the retry policy of acquiring and dialing; zero is
	// [retry.Dial].
	Dial retry.Policy
	// Poll, when set, is how long to wait before asking again for a
	// builder that is not ready, whatever the answer asked for (by
	// default its wait, at least 50 ms).
	Poll time.Duration
}

// Builders are a build's connected builders, by builder platform.
type Builders struct {
	clients map[platform.Platform]*client.Client
}

// Client is the connected builder of platform b, or nil.
func (bs *Builders) Client(b platform.Platform) *client.Client { return bs.clients[b] }

// Close closes every connection.
func (bs *Builders) Close() {
	for _, c := range bs.clients {
		_ = c.Close()
	}
}

// Connect acquires and dials the builders of every platform in builders,
// in parallel. A builder unreachable before the solve (restarting after a
// crash, say) is asked for and dialed again under [retry.Dial]. If ctx ends
// with a cause, the cause is returned.
func Connect(ctx context.Context, a Acquirer, builders []platform.Platform, o ConnectOptions) (*Builders, error) {
	conns := make([]*client.Client, len(builders))
	g, gctx := errgroup.WithContext(ctx)
	for i, b := range builders {
		g.Go(func() error {
			c, err := connectOne(gctx, a, b, o)
			if err != nil {
				if len(builders) > 1 {
					return fmt.Errorf("%s builder: %w", b, err)
				}
				return err
			}
			conns[i] = c
			return nil
		})
	}
	err := g.Wait()
	bs := &Builders{clients: map[platform.Platform]*client.Client{}}
	for i, c := range conns {
		if c != nil {
			bs.clients[builders[i]] = c
		}
	}
	if err != nil {
		bs.Close()
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return nil, cause
		}
		return nil, err
	}
	return bs, nil
}

func connectOne(ctx context.Context, a Acquirer, b platform.Platform, o ConnectOptions) (*client.Client, error) {
	policy := o.Dial
	if policy.Attempts == 0 {
		policy = retry.Dial
	}
	var endpoint string
	c, err := retry.Value(ctx, policy, func(ctx context.Context) (*client.Client, error) {
		conn, err := acquire(ctx, a, b, &o)
		if err != nil {
			return nil, nonRetryable{err}
		}
		endpoint = conn.Endpoint
		return engine.Dial(ctx, conn)
	})
	var nr nonRetryable
	if errors.As(err, &nr) {
		return nil, nr.error
	}
	if err != nil {
		return nil, fmt.Errorf("connect to builder %s: %w", endpoint, err)
	}
	return c, nil
}

// nonRetryable keeps an acquire error out of the dial retry, even when it
// is of kind unavailable (a builder that never started).
type nonRetryable struct{ error }

func (e nonRetryable) Unwrap() error { return nil }

// Await asks a for builder b until it is ready or o.Wait has passed, and
// returns its connection, not dialed.
func Await(ctx context.Context, a Acquirer, b platform.Platform, o ConnectOptions) (engine.Connection, error) {
	return acquire(ctx, a, b, &o)
}

// acquire asks until the builder is ready or o.Wait has passed.
func acquire(ctx context.Context, a Acquirer, b platform.Platform, o *ConnectOptions) (engine.Connection, error) {
	deadline := time.Now().Add(o.Wait)
	for first := true; ; first = false {
		l, err := a.Acquire(ctx, b)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return engine.Connection{}, cause
			}
			return engine.Connection{}, err
		}
		if l.Ready {
			return l.Conn, nil
		}
		if first && o.Waiting != nil {
			o.Waiting(b)
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("the project's %s builder did not start within %s", b, o.Wait)
			if o.Hint != "" {
				msg += " (" + o.Hint + ")"
			}
			return engine.Connection{}, fmt.Errorf("%s: %w", msg, errdefs.ErrUnavailable)
		}
		wait := max(l.Wait, 50*time.Millisecond)
		if o.Poll > 0 {
			wait = o.Poll
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return engine.Connection{}, context.Cause(ctx)
		case <-t.C:
		}
	}
}

// Solve runs req on its builders: one solve on one builder, or one solve
// per target platform, each on the builder [engine.Request.BuilderPlatform]
// names, merged into one image index. progress receives what the engine
// prints; observe sees every status update.
//
// A git context is first resolved to one commit on the builder
// ([engine.Request.ResolveGitCommit]); the build is pinned to it.
//
// While it runs, a stall watch (stall.go) warns on progress when the
// builders have shown no sign of life for 30 s. Server paths in BuildKit's
// errors are taken out (scrub.go).
func Solve(ctx context.Context, bs *Builders, req *engine.Request, progress io.Writer, observe func(*client.SolveStatus)) (*client.SolveResponse, error) {
	var clients []*client.Client
	for _, c := range bs.clients {
		clients = append(clients, c)
	}
	sw, stop := watchBuilders(clients, progress)
	defer stop()
	seen := func(st *client.SolveStatus) {
		sw.alive()
		scrubStatus(st) // before the display and the records see it (scrub.go)
		if observe != nil {
			observe(st)
		}
	}
	var resp *client.SolveResponse
	var err error
	if req.GitContext() != "" {
		// One commit for every platform, resolved on the builder and
		// pinned (engine/git.go): req.GitCommit() is what was built.
		c := bs.Client(req.BuilderPlatform(req.Platform()))
		if req.MultiPlatform() {
			c = Targets(bs, req)[0].Client
		}
		if _, err := req.ResolveGitCommit(ctx, c); err != nil {
			return nil, scrubError(err)
		}
	}
	if !req.MultiPlatform() {
		resp, err = engine.Solve(ctx, bs.Client(req.BuilderPlatform(req.Platform())), req, progress, seen)
	} else {
		resp, err = engine.SolveMulti(ctx, Targets(bs, req), req, progress, seen)
	}
	return resp, scrubError(err)
}

// Targets pairs each of req's target platforms with its builder's client.
func Targets(bs *Builders, req *engine.Request) []engine.Target {
	var targets []engine.Target
	for _, p := range req.Platforms() {
		targets = append(targets, engine.Target{Platform: p, Client: bs.Client(req.BuilderPlatform(p))})
	}
	return targets
}
