package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
func (w *syncWriter) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

// A flood of refused tokens writes one full line and one summary per
// interval, counted by the reason's kind, never the attacker's values.
func TestDeniedLogThrottles(t *testing.T) {
	out := &syncWriter{}
	d := &deniedLog{logger: slog.New(slog.NewTextHandler(out, nil)), msg: "oidc.denied", interval: 20 * time.Millisecond}
	for i := range 1000 {
		reason := "OIDC token issuer is not trusted: \"https://evil.example/" + strings.Repeat("x", i%7) + "\""
		if i%2 == 0 {
			reason = "OIDC token has expired: exp 2026-01-01T00:00:00Z"
		}
		d.log(context.Background(), "reason", reason)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "summary") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	text := out.String()
	if n := strings.Count(text, "\n"); n != 2 {
		t.Fatalf("%d lines for 1000 refusals, want 2:\n%s", n, text)
	}
	if !strings.Contains(text, "refused=999") || !strings.Contains(text, `"OIDC token issuer is not trusted"=500`) || strings.Contains(text[strings.Index(text, "summary"):], "evil.example") {
		t.Errorf("summary:\n%s", text)
	}
}
