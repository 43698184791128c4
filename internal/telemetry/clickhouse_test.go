package telemetry

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The password given in the URL's query goes in basic auth: never in a
// request's URL, so never in the text of a transport's error.
func TestClickHouseKeepsThePasswordOutOfURLsAndErrors(t *testing.T) {
	for _, raw := range []string{
		"http://ch:8123/?database=kiln&user=kiln&password=s3cr3t",
		"http://kiln:s3cr3t@ch:8123/?database=kiln",
	} {
		c, err := NewClickHouse(raw, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var seen *http.Request
		c.client.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			seen = r
			return nil, errors.New("connection reset by peer")
		})
		err = c.Insert(context.Background(), TableBuilds, []byte("{}\n"))
		if err == nil {
			t.Fatalf("%s: insert through a failing transport succeeded", raw)
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%s: the error shows the password: %v", raw, err)
		}
		if strings.Contains(seen.URL.String(), "s3cr3t") || strings.Contains(seen.URL.String(), "user=") {
			t.Errorf("%s: the request's URL carries credentials: %s", raw, seen.URL)
		}
		if u, p, ok := seen.BasicAuth(); !ok || u != "kiln" || p != "s3cr3t" {
			t.Errorf("%s: basic auth = %q, %q, %v; want kiln, s3cr3t", raw, u, p, ok)
		}
	}
}

// syncBuffer is a log's destination written by the exporter's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// What the exporter logs while ClickHouse does not answer names the host,
// not the password.
func TestExporterLogsNoPasswordWhileClickHouseIsDown(t *testing.T) {
	var logs syncBuffer
	e, err := New(Config{URL: "http://127.0.0.1:1/?database=kiln&user=kiln&password=s3cr3t", Dir: t.TempDir(),
		MaxDelay: 10 * time.Millisecond, Source: &fakeSource{builds: map[string]build.Build{}},
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the exporter to log ClickHouse down", func() bool { return strings.Contains(logs.String(), "ClickHouse unavailable") })
	e.Close()
	if strings.Contains(logs.String(), "s3cr3t") {
		t.Fatalf("the log shows the password:\n%s", logs.String())
	}
}
