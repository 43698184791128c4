// Package retry is kiln's one retry policy: bounded attempts with capped
// exponential backoff, retrying only errors the caller names as transient.
// Every loop that tries again — API calls that got no answer, dialing a
// builder that is restarting, uploads, following logs, reporting a build's
// result, polling device login — uses it, so limits are set in one place and read the same way.
package retry

import (
	"context"
	"errors"
	"io"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Policy says how often and how long to try. The zero Policy tries once.
type Policy struct {
	// Attempts is the most tries in all; 0 or 1 is one try, a negative
	// value is unbounded (until ctx ends).
	Attempts int
	// Delay is the wait before the second try; each later wait doubles, up
	// to MaxDelay (when set).
	Delay    time.Duration
	MaxDelay time.Duration
	// Retryable says whether err is worth another try. Nil retries only
	// [Transient] errors.
	Retryable func(error) bool
}

// The policies kiln uses.
var (
	// API is for a call to kiln's API that got no answer: 5 tries over
	// about 3 s. A call the server answered is never silently repeated.
	API = Policy{Attempts: 5, Delay: 200 * time.Millisecond}
	// Dial is for connecting to a builder before a solve starts (it may be
	// restarting after a crash): 5 tries over about 4 s. Once a solve has
	// started it is never retried.
	Dial = Policy{Attempts: 5, Delay: 250 * time.Millisecond, Retryable: errdefs.IsUnavailable}
	// Report is for telling the server how a build ended (FinishBuild,
	// which is idempotent) while it may be restarting: 8 tries over about
	// 30 s, also after an answer was cut off ([Repeatable]).
	Report = Policy{Attempts: 8, Delay: 500 * time.Millisecond, MaxDelay: 8 * time.Second, Retryable: Repeatable}
	// Follow is for reopening a followed stream that replays what it
	// already sent (a build's events): 10 tries over about 30 s, long
	// enough for a server to be restarted, also after the stream was cut
	// off mid-message ([Repeatable]).
	Follow = Policy{Attempts: 10, Delay: 500 * time.Millisecond, MaxDelay: 5 * time.Second, Retryable: Repeatable}
)

// Do calls fn until it succeeds, fails with an error p does not retry,
// the attempts run out or ctx ends. It returns fn's last error (ctx's
// cause only when ctx ended before fn ever ran).
func Do(ctx context.Context, p Policy, fn func(ctx context.Context) error) error {
	_, err := Value(ctx, p, func(ctx context.Context) (struct{}, error) { return struct{}{}, fn(ctx) })
	return err
}

// Value is [Do] for a function that returns a value.
func Value[T any](ctx context.Context, p Policy, fn func(ctx context.Context) (T, error)) (T, error) {
	retryable := p.Retryable
	if retryable == nil {
		retryable = Transient
	}
	delay := p.Delay
	for attempt := 1; ; attempt++ {
		v, err := fn(ctx)
		if err == nil || !retryable(err) || (p.Attempts >= 0 && attempt >= p.Attempts) {
			return v, err
		}
		if ctx.Err() != nil {
			return v, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		delay *= 2
		if p.MaxDelay > 0 && delay > p.MaxDelay {
			delay = p.MaxDelay
		}
	}
}

// Transient reports whether err means a call got no answer: Connect's
// Unavailable (connection refused or reset, server restarting), a reset or
// refused connection that surfaced with another code, or a kiln error of
// kind unavailable. Typed errors only; messages are never matched.
func Transient(err error) bool {
	return connect.CodeOf(err) == connect.CodeUnavailable || errdefs.IsUnavailable(err) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		// The request was written into a connection the server had
		// already reset: it never reached a handler.
		errors.Is(err, syscall.EPIPE)
}

// Interrupted reports whether err is an answer cut off in the middle: the
// connection ended before the whole response arrived (the server was
// killed, a proxy dropped it), which connect reports as a protocol error
// wrapping io.ErrUnexpectedEOF. The server may have acted on the call, so
// only calls that are safe to repeat retry it (see [Repeatable]).
func Interrupted(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF)
}

// Repeatable is the Retryable of calls that are safe to repeat even when
// the server may already have acted on them — idempotent calls and
// streams that replay: [Transient] errors and [Interrupted] answers.
func Repeatable(err error) bool {
	return Transient(err) || Interrupted(err)
}
