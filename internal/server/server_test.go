package server

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/builder"
)

// TestNewReleasesOnLateFailure makes New's last step fail (a missing
// --push-auth-file, read after the fleet, the registry and the blob store
// are open) and checks that what the earlier steps opened was released: the
// builder fleet's network pool, which a leaked fleet keeps locked, can be
// claimed again by a second New in this process.
func TestNewReleasesOnLateFailure(t *testing.T) {
	data := t.TempDir()
	cfg := Config{
		DataDir:       data,
		Addr:          "127.0.0.1:0",
		BuildkitdPath: "/bin/true",
		// A pool no other test or server uses: its lock is per machine.
		// Outside 10.128.0.0/9, where the e2e servers (which may run at
		// the same time) draw their pools.
		BuilderNetwork: builder.Network{Pool: netip.MustParsePrefix("10.77.0.0/16")},
		Source:         SourceConfig{PushAuthFile: filepath.Join(data, "missing-config.json")},
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for i := range 2 {
		s, err := New(context.Background(), cfg)
		if err == nil {
			t.Fatalf("New #%d with a missing --push-auth-file succeeded: %+v", i+1, s)
		}
		if !strings.Contains(err.Error(), "--push-auth-file") {
			t.Fatalf("New #%d: %v; want the --push-auth-file error (the first New's fleet still holds the network pool?)", i+1, err)
		}
	}
}
