package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// syncBuffer is a bytes.Buffer safe for the watch's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newWatch(w *syncBuffer, probe func(context.Context) error) (*stallWatch, func()) {
	sw := &stallWatch{warnAfter: 300 * time.Millisecond, every: 50 * time.Millisecond, wait: 50 * time.Millisecond,
		probes: []func(context.Context) error{probe}, w: w}
	return sw, sw.start()
}

// A builder that answers nothing gets the user a warning, once per
// silence; one that answers its probe (a long quiet step) does not.
func TestStallWatchWarns(t *testing.T) {
	var out syncBuffer
	hung := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	_, stop := newWatch(&out, hung)
	time.Sleep(time.Second)
	stop()
	if n := strings.Count(out.String(), "no progress from the builder for"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, out.String())
	}

	var quiet syncBuffer
	_, stop = newWatch(&quiet, func(context.Context) error { return nil })
	time.Sleep(time.Second)
	stop()
	if quiet.String() != "" {
		t.Fatalf("a builder answering its probes got a warning: %s", quiet.String())
	}

	// Status updates are signs of life too, and a new silence warns again.
	var busy syncBuffer
	sw, stop := newWatch(&busy, hung)
	for i := 0; i < 10; i++ {
		time.Sleep(100 * time.Millisecond)
		sw.alive()
	}
	if busy.String() != "" {
		stop()
		t.Fatalf("a builder sending status got a warning: %s", busy.String())
	}
	time.Sleep(time.Second)
	sw.alive()
	time.Sleep(time.Second)
	stop()
	if n := strings.Count(busy.String(), "no progress"); n != 2 {
		t.Fatalf("%d warnings over two silences, want 2:\n%s", n, busy.String())
	}
}

// Only a broken builder connection sends the client to ask the server why.
func TestBuilderLostClassifies(t *testing.T) {
	eof := status.Error(codes.Unavailable, "error reading from server: EOF")
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{eof, true},
		{fmt.Errorf("solve: %w", eof), true},
		{status.Error(codes.Unknown, `process "/bin/sh -c false" did not complete successfully: exit code: 1`), false},
		{context.Canceled, false},
		{errors.New("plain"), false},
		{nil, false},
	} {
		if got := builderLost(tc.err); got != tc.want {
			t.Errorf("builderLost(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	le := &lostError{msg: "the builder for project p (linux/amd64) crashed during the build (signal 9); retry the build", cause: eof}
	if le.Error() != le.msg || !errors.Is(le, eof) {
		t.Errorf("lostError: %q, Is(cause) %v", le.Error(), errors.Is(le, eof))
	}
}
