package engine

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// A secret source that never answers fails the read after the bound
// instead of holding the build; one that answers is passed through.
func TestSecretReadIsBounded(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	hung := func(ctx context.Context, id string) ([]byte, error) { <-block; return nil, nil }
	start := time.Now()
	_, err := readBounded(context.Background(), "tok", 100*time.Millisecond, hung)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), `secret "tok": reading its source did not finish within 100ms`) {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %s", took)
	}
	ok := func(ctx context.Context, id string) ([]byte, error) { return []byte("v-" + id), nil }
	if b, err := readBounded(context.Background(), "x", time.Second, ok); err != nil || string(b) != "v-x" {
		t.Fatalf("readBounded = %q, %v", b, err)
	}
	failing := func(ctx context.Context, id string) ([]byte, error) { return nil, errors.New("not found") }
	if _, err := readBounded(context.Background(), "x", time.Second, failing); err == nil || err.Error() != "not found" {
		t.Fatalf("an error of the source: %v", err)
	}
}
