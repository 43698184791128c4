package session

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/retry"
)

// acquirer answers from a function and counts the calls.
type acquirer struct {
	calls  atomic.Int32
	answer func(n int32) (Lease, error)
}

func (a *acquirer) Acquire(ctx context.Context, b platform.Platform) (Lease, error) {
	return a.answer(a.calls.Add(1))
}

var fast = retry.Policy{Attempts: 3, Delay: time.Millisecond, Retryable: errdefs.IsUnavailable}

func TestConnectGivesUpOnABuilderThatNeverStarts(t *testing.T) {
	a := &acquirer{answer: func(int32) (Lease, error) { return Lease{Wait: time.Millisecond}, nil }}
	waiting := 0
	_, err := Connect(context.Background(), a, []platform.Platform{platform.ARM64},
		ConnectOptions{Wait: 20 * time.Millisecond, Hint: "raise --builder-wait", Waiting: func(platform.Platform) { waiting++ }, Dial: fast})
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "linux/arm64 builder did not start within 20ms (raise --builder-wait)") {
		t.Fatalf("err = %v", err)
	}
	if waiting != 1 {
		t.Errorf("Waiting called %d times", waiting)
	}
}

func TestConnectDoesNotRetryARefusal(t *testing.T) {
	a := &acquirer{answer: func(int32) (Lease, error) { return Lease{}, errdefs.ErrPermission }}
	_, err := Connect(context.Background(), a, []platform.Platform{platform.AMD64}, ConnectOptions{Wait: time.Second, Dial: fast})
	if !errors.Is(err, errdefs.ErrPermission) || a.calls.Load() != 1 {
		t.Fatalf("err = %v after %d calls", err, a.calls.Load())
	}
}

func TestConnectRetriesAnUnreachableBuilder(t *testing.T) {
	sock := "unix://" + filepath.Join(t.TempDir(), "nobody.sock")
	a := &acquirer{answer: func(int32) (Lease, error) { return Lease{Ready: true, Conn: engine.Connection{Endpoint: sock}}, nil }}
	_, err := Connect(context.Background(), a, []platform.Platform{platform.AMD64}, ConnectOptions{Wait: time.Second, Dial: fast})
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "connect to builder "+sock) {
		t.Fatalf("err = %v", err)
	}
	if n := a.calls.Load(); n != 3 {
		t.Errorf("acquired %d times; want one per dial attempt (3)", n)
	}
}

func TestConnectReturnsTheCause(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("the server ended the build")
	a := &acquirer{answer: func(n int32) (Lease, error) {
		cancel(cause)
		return Lease{Wait: time.Hour}, nil
	}}
	_, err := Connect(ctx, a, []platform.Platform{platform.AMD64, platform.ARM64}, ConnectOptions{Wait: time.Hour, Dial: fast})
	if !errors.Is(err, cause) {
		t.Fatalf("err = %v", err)
	}
}
