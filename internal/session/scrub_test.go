package session

import (
	"errors"
	"strings"
	"testing"

	"github.com/moby/buildkit/client"
)

// What a builder out of disk said, as the client got it: no server path
// is left in what the client shows or reports.
func TestScrubServerPaths(t *testing.T) {
	raw := `mount callback failed on /var/lib/kiln-e2e-1/builders/0x4fgxtrbdwp/amd64/tmp/containerd-mount1979559222: ` +
		`failed to copy: /srv/data/builders/p-1/arm-v7/state/runc-overlayfs/content/ingest/abc/data: no space left on device`
	got := scrubPaths(raw)
	if strings.Contains(got, "/var/lib") || strings.Contains(got, "/srv/data") || strings.Contains(got, "/builders/") {
		t.Fatalf("server path left: %s", got)
	}
	if !strings.Contains(got, "[builder]/tmp/containerd-mount1979559222") || !strings.Contains(got, "no space left on device") {
		t.Fatalf("scrubbed too much: %s", got)
	}
	// The user's own paths stay.
	if s := "COPY failed: /src/app/main.go: not found"; scrubPaths(s) != s {
		t.Errorf("scrubPaths(%q) = %q", s, scrubPaths(s))
	}

	st := &client.SolveStatus{Vertexes: []*client.Vertex{{Error: raw}, {Name: "ok"}}}
	scrubStatus(st)
	if strings.Contains(st.Vertexes[0].Error, "/builders/") {
		t.Errorf("step error not scrubbed: %s", st.Vertexes[0].Error)
	}

	cause := errors.New(raw)
	err := scrubError(cause)
	if strings.Contains(err.Error(), "/builders/") || !errors.Is(err, cause) {
		t.Errorf("scrubError: %v (Is cause: %v)", err, errors.Is(err, cause))
	}
	plain := errors.New("exit code: 1")
	if scrubError(plain) != plain {
		t.Error("an error without paths was wrapped")
	}
}
