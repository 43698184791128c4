package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/moby/buildkit/client"
)

// fakeDockerd answers the three Docker API calls --load makes: ping (API
// version negotiation), info and images/load.
type fakeDockerd struct {
	containerd bool
	// load handles POST /images/load after the test's hooks.
	load func(w http.ResponseWriter, r *http.Request)

	mu       sync.Mutex
	received bytes.Buffer
}

func (f *fakeDockerd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Api-Version", "1.43")
	switch {
	case strings.HasSuffix(r.URL.Path, "/_ping"):
		w.Write([]byte("OK"))
	case strings.HasSuffix(r.URL.Path, "/info"):
		info := map[string]any{"ID": "fake"}
		if f.containerd {
			info["DriverStatus"] = [][2]string{{"driver-type", "io.containerd.snapshotter.v1"}}
		}
		json.NewEncoder(w).Encode(info)
	case strings.HasSuffix(r.URL.Path, "/images/load") && r.Method == http.MethodPost:
		f.load(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeDockerd) got() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.received.String()
}

func startFakeDockerd(t *testing.T, f *fakeDockerd) {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	t.Setenv("DOCKER_HOST", "tcp://"+strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("DOCKER_TLS_VERIFY", "")
	t.Setenv("DOCKER_CERT_PATH", "")
	t.Setenv("DOCKER_API_VERSION", "")
}

// okLoad reads the archive as it arrives and answers like dockerd.
func (f *fakeDockerd) okLoad(w http.ResponseWriter, r *http.Request) {
	buf := make([]byte, 4)
	for {
		n, err := r.Body.Read(buf)
		f.mu.Lock()
		f.received.Write(buf[:n])
		f.mu.Unlock()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"stream": "Loaded image: app:dev\n"})
}

func newLoad(t *testing.T, ctx context.Context) *dockerLoad {
	t.Helper()
	e, err := connectDocker(ctx, "", "--load")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.api.Close() })
	return &dockerLoad{engine: e, ctx: ctx, done: make(chan struct{})}
}

// The archive goes to the engine while it is written: the engine has the
// first bytes before the exporter closes its output.
func TestDockerLoadStreams(t *testing.T) {
	f := &fakeDockerd{}
	f.load = f.okLoad
	startFakeDockerd(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLoad(t, ctx)

	w, err := l.writer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("first-chunk;")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(f.got(), "first-chunk;") {
		if time.Now().After(deadline) {
			t.Fatalf("the engine had %q before the output was closed; want the first chunk (streamed, not staged)", f.got())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := w.Write([]byte("second-chunk")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.finish(nil); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if f.got() != "first-chunk;second-chunk" {
		t.Errorf("engine received %q", f.got())
	}
	if m := l.Messages(); len(m) != 1 || m[0] != "Loaded image: app:dev" {
		t.Errorf("messages %q", m)
	}
	if _, err := l.writer(nil); err == nil {
		t.Error("a second writer was handed out")
	}
}

// An engine that refuses the archive stops the exporter's writes, and its
// reason is what the user reads, not a broken pipe.
func TestDockerLoadEngineRefuses(t *testing.T) {
	f := &fakeDockerd{}
	f.load = func(w http.ResponseWriter, r *http.Request) {
		io.CopyN(io.Discard, r.Body, 3)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"errorDetail": map[string]string{"message": "archive/tar: invalid tar header"}, "error": "archive/tar: invalid tar header"})
	}
	startFakeDockerd(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLoad(t, ctx)
	w, err := l.writer(nil)
	if err != nil {
		t.Fatal(err)
	}
	// BuildKit keeps writing while the engine, having read a few bytes,
	// refuses the archive. (The HTTP server may drain some of the body
	// before it answers, so the writer is fed until the answer is in.)
	werr := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for i := 0; i < 4096; i++ { // at most 256 MiB
			if _, err := w.Write(chunk); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	select {
	case <-l.done:
	case <-ctx.Done():
		t.Fatal("the engine's refusal never arrived")
	}
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("writes kept succeeding after the engine refused the archive")
		}
	case <-ctx.Done():
		t.Fatal("a write blocked after the engine refused the archive")
	}
	err = l.finish(errors.New("rpc error: failed to copy: io: read/write on closed pipe"))
	if err == nil || !strings.Contains(err.Error(), "invalid tar header") || !strings.Contains(err.Error(), "--load") {
		t.Errorf("finish = %v, want the engine's reason", err)
	}
}

// A solve that fails while the archive is streaming aborts the engine's
// request, and the solve's error is reported.
func TestDockerLoadAbortedBySolve(t *testing.T) {
	aborted := make(chan error, 1)
	f := &fakeDockerd{}
	f.load = func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		aborted <- err
	}
	startFakeDockerd(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := newLoad(t, ctx)
	w, err := l.writer(nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("partial"))
	solveErr := errors.New("exporting: builder went away")
	if err := l.finish(solveErr); err != solveErr {
		t.Errorf("finish = %v, want the solve's error", err)
	}
	select {
	case err := <-aborted:
		if err == nil {
			t.Error("the engine read a complete body from an aborted load")
		}
	case <-time.After(10 * time.Second):
		t.Error("the engine's request was not aborted")
	}
}

func TestDockerLoadNeverOpened(t *testing.T) {
	l := &dockerLoad{done: make(chan struct{})}
	if err := l.finish(nil); err == nil {
		t.Error("a successful solve that never sent the image was not reported")
	}
	boom := errors.New("boom")
	if err := l.finish(boom); err != boom {
		t.Errorf("finish(boom) = %v", err)
	}
}

// CheckDocker: an unreachable engine is Unavailable; a classic engine
// refuses attestations (buildx refuses them too); the containerd store
// takes them through the oci exporter.
func TestCheckDocker(t *testing.T) {
	ctxDir := kilntest.Context(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("unreachable", func(t *testing.T) {
		t.Setenv("DOCKER_HOST", "unix:///nonexistent/kiln/docker.sock")
		r := mustPrepare(t, Options{ContextPath: ctxDir, Load: true})
		err := r.CheckDocker(ctx)
		if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "/nonexistent/kiln/docker.sock") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("no load, no contact", func(t *testing.T) {
		t.Setenv("DOCKER_HOST", "unix:///nonexistent/kiln/docker.sock")
		r := mustPrepare(t, Options{ContextPath: ctxDir, Outputs: []string{t.TempDir()}})
		if err := r.CheckDocker(ctx); err != nil {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("classic store refuses attestations", func(t *testing.T) {
		startFakeDockerd(t, &fakeDockerd{})
		r := mustPrepare(t, Options{ContextPath: ctxDir, Load: true, Provenance: "mode=max"})
		err := r.CheckDocker(ctx)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "attestations") || !strings.Contains(err.Error(), "--provenance=false") {
			t.Errorf("err = %v", err)
		}
		// The default (inline-only) provenance is fine: it stays out of
		// the docker archive.
		r = mustPrepare(t, Options{ContextPath: ctxDir, Load: true})
		if err := r.CheckDocker(ctx); err != nil {
			t.Fatal(err)
		}
		ents, err := r.exportEntries(func(*outputSpec) (*dockerLoad, error) {
			return &dockerLoad{engine: r.docker, ctx: ctx, done: make(chan struct{})}, nil
		})
		if err != nil || len(ents) != 1 || ents[0].Type != client.ExporterDocker || ents[0].Output == nil {
			t.Errorf("entries %+v %v", ents, err)
		}
	})
	t.Run("containerd store loads OCI", func(t *testing.T) {
		startFakeDockerd(t, &fakeDockerd{containerd: true})
		r := mustPrepare(t, Options{ContextPath: ctxDir, Load: true, Provenance: "mode=max", Tags: []string{"app"}})
		if err := r.CheckDocker(ctx); err != nil {
			t.Fatal(err)
		}
		ents, err := r.exportEntries(func(*outputSpec) (*dockerLoad, error) {
			return &dockerLoad{engine: r.docker, ctx: ctx, done: make(chan struct{})}, nil
		})
		if err != nil || len(ents) != 1 || ents[0].Type != client.ExporterOCI || ents[0].Attrs["name"] != "app" {
			t.Errorf("entries %+v %v", ents, err)
		}
	})
	t.Run("unknown context", func(t *testing.T) {
		t.Setenv("DOCKER_HOST", "")
		t.Setenv("DOCKER_CONFIG", t.TempDir())
		r := mustPrepare(t, Options{ContextPath: ctxDir, Outputs: []string{"type=docker,context=nosuchcontext"}})
		err := r.CheckDocker(ctx)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `"nosuchcontext"`) {
			t.Errorf("err = %v", err)
		}
	})
}
