package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type fakeStore struct {
	ends int
	down bool
}

func (f *fakeStore) PendingEnds() int { return f.ends }

func (f *fakeStore) Ping(context.Context) error {
	if f.down {
		return errors.New("dial tcp 10.0.0.5:5432: connection refused")
	}
	return nil
}

// /readyz is 200 "ok" with room on the data disk and nothing waiting to be
// written, and 503 naming the reason while build ends wait, with no path.
func TestReadyzReportsWaitingEnds(t *testing.T) {
	dir := t.TempDir()
	st := &fakeStore{}
	rd := &readiness{dataDir: dir, store: st, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	get := func() (int, string) {
		w := httptest.NewRecorder()
		rd.ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
		return w.Code, w.Body.String()
	}
	if code, body := get(); code != http.StatusOK || body != "ok\n" {
		t.Errorf("ready: %d %q", code, body)
	}
	st.ends = 2
	code, body := get()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "2 finished builds wait for room") || strings.Contains(body, dir) {
		t.Errorf("with ends waiting: %d %q; want 503 saying 2 wait, no path", code, body)
	}
	st.ends = 0
	if code, _ := get(); code != http.StatusOK {
		t.Errorf("after they were written: %d", code)
	}
	// A database that does not answer (Postgres elsewhere): 503, naming
	// nothing of it.
	st.down = true
	code, body = get()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "database does not answer") || strings.Contains(body, "10.0.0.5") {
		t.Errorf("database down: %d %q; want 503 without its address", code, body)
	}
}
