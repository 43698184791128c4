package retry

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func TestDoStopsAtAttempts(t *testing.T) {
	n := 0
	err := Do(context.Background(), Policy{Attempts: 3, Delay: time.Microsecond}, func(context.Context) error {
		n++
		return connect.NewError(connect.CodeUnavailable, errors.New("down"))
	})
	if n != 3 || connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("n=%d err=%v", n, err)
	}
}

func TestDoDoesNotRetryAnswers(t *testing.T) {
	n := 0
	err := Do(context.Background(), API, func(context.Context) error {
		n++
		return connect.NewError(connect.CodeInvalidArgument, errors.New("bad"))
	})
	if n != 1 || err == nil {
		t.Fatalf("n=%d err=%v", n, err)
	}
}

func TestValueSucceedsAfterTransient(t *testing.T) {
	n := 0
	v, err := Value(context.Background(), Policy{Attempts: -1, Delay: time.Microsecond, MaxDelay: time.Millisecond}, func(context.Context) (int, error) {
		n++
		if n < 4 {
			return 0, fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
		}
		return 42, nil
	})
	if v != 42 || err != nil || n != 4 {
		t.Fatalf("v=%d err=%v n=%d", v, err, n)
	}
}

func TestDoEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	err := Do(ctx, Policy{Attempts: -1, Delay: time.Hour}, func(context.Context) error {
		n++
		cancel()
		return errdefs.ErrUnavailable
	})
	if n != 1 || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("n=%d err=%v", n, err)
	}
}

func TestCustomRetryable(t *testing.T) {
	n := 0
	_ = Do(context.Background(), Policy{Attempts: 5, Delay: time.Microsecond, Retryable: errdefs.IsInvalid}, func(context.Context) error {
		n++
		return connect.NewError(connect.CodeUnavailable, errors.New("down"))
	})
	if n != 1 {
		t.Fatalf("Unavailable retried under a policy that retries only invalid: n=%d", n)
	}
}
