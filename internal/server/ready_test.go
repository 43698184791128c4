package server

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type fakeEnds int

func (n fakeEnds) PendingEnds() int { return int(n) }

// /readyz is 200 "ok" with room on the data disk and nothing waiting to be
// written, and 503 naming the reason while build ends wait, with no path.
func TestReadyzReportsWaitingEnds(t *testing.T) {
	dir := t.TempDir()
	var ends fakeEnds
	rd := &readiness{dataDir: dir, store: &ends, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	get := func() (int, string) {
		w := httptest.NewRecorder()
		rd.ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
		return w.Code, w.Body.String()
	}
	if code, body := get(); code != http.StatusOK || body != "ok\n" {
		t.Errorf("ready: %d %q", code, body)
	}
	ends = 2
	code, body := get()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "2 finished builds wait for room") || strings.Contains(body, dir) {
		t.Errorf("with ends waiting: %d %q; want 503 saying 2 wait, no path", code, body)
	}
	ends = 0
	if code, _ := get(); code != http.StatusOK {
		t.Errorf("after they were written: %d", code)
	}
}
