package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/metrics"
)

// scrape serves m's handler and parses its answer as a Prometheus scraper
// would: a failure to parse fails the test.
func scrape(t *testing.T, m *metrics.Metrics) map[string]*familyView {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	out := map[string]*familyView{}
	for name, f := range fams {
		v := &familyView{help: f.GetHelp()}
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			var val float64
			switch {
			case mt.Counter != nil:
				val = mt.Counter.GetValue()
			case mt.Gauge != nil:
				val = mt.Gauge.GetValue()
			case mt.Histogram != nil:
				val = float64(mt.Histogram.GetSampleCount())
			}
			v.series = append(v.series, series{labels, val})
		}
		out[name] = v
	}
	return out
}

type series struct {
	labels map[string]string
	value  float64 // a counter's or gauge's value; a histogram's sample count
}

type familyView struct {
	help   string
	series []series
}

// value is the series' value with exactly these labels, or -1 if absent.
func value(fams map[string]*familyView, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, s := range f.series {
		if len(s.labels) != len(labels)/2 {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return s.value
	}
	return -1
}

func want(t *testing.T, fams map[string]*familyView, v float64, name string, labels ...string) {
	t.Helper()
	if got := value(fams, name, labels...); got != v {
		t.Errorf("%s%v = %v, want %v", name, labels, got, v)
	}
}

// A client build's life and a source build's, as the build service tells
// them: counted by kind and status, timed, and their steps counted once
// the follower is done with them (StepsDelay after the end).
func TestBuildLives(t *testing.T) {
	stored := map[string][]build.Step{
		"b1": {{Name: "[internal] load build definition"}, {Name: "[1/3] FROM busybox", Cached: true},
			{Name: "[2/3] RUN make"}, {Name: "[3/3] COPY . ."}},
		"b2": {{Name: "[1/2] FROM busybox", Cached: true}, {Name: "[2/2] RUN true", Cached: true}},
	}
	m := metrics.New(metrics.Config{StepsDelay: 50 * time.Millisecond,
		Steps: func(_ context.Context, id string) ([]build.Step, error) { return stored[id], nil }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)

	t0 := time.Now().UTC()
	client := build.Build{ID: "b1", Status: build.Running, CreatedAt: t0, StartedAt: t0}
	m.BuildCreated(client)
	source := build.Build{ID: "b2", Kind: build.KindSource, Status: build.Queued, CreatedAt: t0}
	m.BuildCreated(source)
	fams := scrape(t, m)
	want(t, fams, 1, "kiln_builds_created_total", "kind", "client")
	want(t, fams, 1, "kiln_builds_created_total", "kind", "source")
	want(t, fams, 1, "kiln_builds_started_total", "kind", "client")
	want(t, fams, 0, "kiln_builds_started_total", "kind", "source") // queued, not started

	source.Status, source.StartedAt = build.Running, t0.Add(3*time.Second)
	m.BuildStarted(source)
	client.Status, client.FinishedAt = build.Succeeded, t0.Add(90*time.Second)
	m.BuildEnded(client)
	source.Status, source.FinishedAt = build.Failed, t0.Add(10*time.Second)
	m.BuildEnded(source)

	fams = scrape(t, m)
	want(t, fams, 1, "kiln_builds_started_total", "kind", "source")
	want(t, fams, 1, "kiln_build_queue_wait_seconds")
	want(t, fams, 1, "kiln_builds_finished_total", "kind", "client", "status", "succeeded")
	want(t, fams, 1, "kiln_builds_finished_total", "kind", "source", "status", "failed")
	want(t, fams, 0, "kiln_builds_finished_total", "kind", "client", "status", "failed")
	want(t, fams, 1, "kiln_build_duration_seconds", "kind", "client", "status", "succeeded")
	// Steps are counted after StepsDelay, not on the build service's path.
	want(t, fams, 0, "kiln_build_steps_total", "kind", "client", "result", "executed")

	deadline := time.Now().Add(5 * time.Second)
	for value(scrape(t, m), "kiln_build_steps_total", "kind", "source", "result", "cached") != 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	fams = scrape(t, m)
	// Counted as GetBuild counts them: BuildKit's own "[internal]" step is not.
	want(t, fams, 1, "kiln_build_steps_total", "kind", "client", "result", "cached")
	want(t, fams, 2, "kiln_build_steps_total", "kind", "client", "result", "executed")
	want(t, fams, 2, "kiln_build_steps_total", "kind", "source", "result", "cached")
	want(t, fams, 0, "kiln_build_steps_total", "kind", "source", "result", "executed")

	// The duration histogram buckets the build's 90 s where a user
	// expects: in le="120", not in le="60".
	var buf bytes.Buffer
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	buf.ReadFrom(rec.Body)
	for _, line := range []string{
		`kiln_build_duration_seconds_bucket{kind="client",status="succeeded",le="60"} 0`,
		`kiln_build_duration_seconds_bucket{kind="client",status="succeeded",le="120"} 1`,
		`kiln_build_duration_seconds_sum{kind="client",status="succeeded"} 90`,
	} {
		if !strings.Contains(buf.String(), line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

// A build reported ended twice (a failure kiln presumed at restart, then
// the client's late success) is counted once, as it first ended: its
// status, its duration and its steps.
func TestBuildEndedTwiceCountsOnce(t *testing.T) {
	steps := []build.Step{{Name: "[1/2] FROM busybox", Cached: true}, {Name: "[2/2] RUN make"}}
	m := metrics.New(metrics.Config{StepsDelay: time.Millisecond,
		Steps: func(context.Context, string) ([]build.Step, error) { return steps, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)

	t0 := time.Now().UTC()
	b := build.Build{ID: "b1", Status: build.Failed, CreatedAt: t0, StartedAt: t0, FinishedAt: t0.Add(time.Minute)}
	m.BuildEnded(b)
	b.Status = build.Succeeded
	m.BuildEnded(b)
	other := build.Build{ID: "b2", Status: build.Succeeded, CreatedAt: t0, StartedAt: t0, FinishedAt: t0.Add(time.Minute)}
	m.BuildEnded(other)

	deadline := time.Now().Add(5 * time.Second)
	for value(scrape(t, m), "kiln_build_steps_total", "kind", "client", "result", "executed") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a second count of b1's steps would be in by now
	fams := scrape(t, m)
	want(t, fams, 1, "kiln_builds_finished_total", "kind", "client", "status", "failed")
	want(t, fams, 1, "kiln_builds_finished_total", "kind", "client", "status", "succeeded") // b2 only
	want(t, fams, 1, "kiln_build_duration_seconds", "kind", "client", "status", "failed")
	want(t, fams, 1, "kiln_build_duration_seconds", "kind", "client", "status", "succeeded")
	want(t, fams, 2, "kiln_build_steps_total", "kind", "client", "result", "executed")
	want(t, fams, 2, "kiln_build_steps_total", "kind", "client", "result", "cached")
}

// The observer never blocks the build service: with the queue full, or
// the store failing, a build's steps go uncounted, and a metric says so.
func TestStepsUncounted(t *testing.T) {
	m := metrics.New(metrics.Config{StepsQueue: 1, StepsDelay: time.Millisecond,
		Steps: func(context.Context, string) ([]build.Step, error) { return nil, errors.New("database is locked") }})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3 {
			// Run is not running: the queue holds one.
			m.BuildEnded(build.Build{ID: fmt.Sprint("b", i), Status: build.Canceled})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("BuildEnded blocked with the steps queue full")
	}
	want(t, scrape(t, m), 2, "kiln_build_steps_uncounted_total", "reason", "queue_full")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for value(scrape(t, m), "kiln_build_steps_uncounted_total", "reason", "store_error") != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	want(t, scrape(t, m), 1, "kiln_build_steps_uncounted_total", "reason", "store_error")
	want(t, scrape(t, m), 3, "kiln_builds_finished_total", "kind", "client", "status", "canceled")
}

// Builders are counted by state at each scrape, from the fleet's status.
func TestBuilders(t *testing.T) {
	fleet := []builder.Status{
		{State: builder.StateStarting},
		{State: builder.StateReady, Leases: []string{"b1"}},
		{State: builder.StateReady, Conns: 2},
		{State: builder.StateReady},
		{State: builder.StateStopped},
		{State: builder.StateCrashed},
	}
	m := metrics.New(metrics.Config{Builders: func() []builder.Status { return fleet }})
	fams := scrape(t, m)
	for state, n := range map[string]float64{"starting": 1, "running": 2, "idle": 1, "stopped": 1, "crashed": 1} {
		want(t, fams, n, "kiln_builders", "state", state)
	}
	want(t, fams, 2, "kiln_builder_connections")
	fleet = nil
	want(t, scrape(t, m), 0, "kiln_builders", "state", "running")
}

func TestAcquire(t *testing.T) {
	m := metrics.New(metrics.Config{})
	m.OnAcquire(2*time.Millisecond, true, nil)
	m.OnAcquire(2*time.Second, false, nil)
	m.OnAcquire(time.Millisecond, false, errors.New("builder failed to start"))
	fams := scrape(t, m)
	for _, result := range []string{"ready", "pending", "error"} {
		want(t, fams, 1, "kiln_builder_acquire_duration_seconds", "result", result)
	}
}

// Registry bytes: what pushes send (blob chunks and uploads, manifests)
// and what successful pulls receive, whatever way the handler writes.
func TestRegistryBytes(t *testing.T) {
	m := metrics.New(metrics.Config{})
	blobFile := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(blobFile, bytes.Repeat([]byte("x"), 5000), 0o600)
	reg := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/missing"):
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		case r.Method == "GET" && strings.Contains(r.URL.Path, "/blobs/"):
			http.ServeFile(w, r, blobFile) // sendfile: the writer's ReadFrom
		case r.Method == "GET":
			w.Write([]byte(`{"schemaVersion":2}`))
		default:
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusAccepted)
		}
	})
	srv := httptest.NewServer(m.Registry(reg))
	defer srv.Close()
	do := func(method, path string, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if body == "" {
			req.Body = nil
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	do("POST", "/v2/p/app/blobs/uploads/", "")
	do("PATCH", "/v2/p/app/blobs/uploads/u1", strings.Repeat("a", 1000))
	do("PUT", "/v2/p/app/blobs/uploads/u1?digest=sha256:x", strings.Repeat("b", 24))
	do("PUT", "/v2/p/blobs/manifests/v1", `{"schemaVersion":2,"x":1}`) // a repository named "blobs"
	do("GET", "/v2/p/app/blobs/sha256:x", "")
	do("GET", "/v2/p/app/manifests/v1", "")
	do("GET", "/v2/p/app/blobs/missing", "")
	do("GET", "/v2/_catalog", "")
	fams := scrape(t, m)
	want(t, fams, 1024, "kiln_registry_pushed_bytes_total", "kind", "blob")
	want(t, fams, 25, "kiln_registry_pushed_bytes_total", "kind", "manifest")
	want(t, fams, 5000, "kiln_registry_pulled_bytes_total", "kind", "blob")
	want(t, fams, 19, "kiln_registry_pulled_bytes_total", "kind", "manifest")
}

func TestUploadBytes(t *testing.T) {
	m := metrics.New(metrics.Config{})
	h := m.Uploads(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("PUT", "/blobs/k?sig=s", strings.NewReader(strings.Repeat("z", 4096))))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/blobs/k", nil))
	want(t, scrape(t, m), 4096, "kiln_context_upload_bytes_total")
}

// API calls are counted by the procedure kiln registered and the code the
// client got; paths no procedure answers add no series.
func TestAPI(t *testing.T) {
	m := metrics.New(metrics.Config{})
	const ping, fail = "/test.v1.Test/Ping", "/test.v1.Test/Fail"
	mux := http.NewServeMux()
	mux.Handle(ping, connect.NewUnaryHandler(ping, func(context.Context, *connect.Request[emptypb.Empty]) (*connect.Response[emptypb.Empty], error) {
		return connect.NewResponse(&emptypb.Empty{}), nil
	}, connect.WithInterceptors(m.API())))
	mux.Handle(fail, connect.NewUnaryHandler(fail, func(context.Context, *connect.Request[emptypb.Empty]) (*connect.Response[emptypb.Empty], error) {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such build"))
	}, connect.WithInterceptors(m.API())))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for range 2 {
		connect.NewClient[emptypb.Empty, emptypb.Empty](srv.Client(), srv.URL+ping).CallUnary(context.Background(), connect.NewRequest(&emptypb.Empty{}))
	}
	connect.NewClient[emptypb.Empty, emptypb.Empty](srv.Client(), srv.URL+fail).CallUnary(context.Background(), connect.NewRequest(&emptypb.Empty{}))
	http.Post(srv.URL+"/test.v1.Test/Nope", "application/json", strings.NewReader("{}"))
	fams := scrape(t, m)
	want(t, fams, 2, "kiln_api_requests_total", "procedure", ping, "code", "ok")
	want(t, fams, 1, "kiln_api_requests_total", "procedure", fail, "code", "not_found")
	want(t, fams, 2, "kiln_api_request_duration_seconds", "procedure", ping)
	if n := len(fams["kiln_api_requests_total"].series); n != 2 {
		t.Errorf("kiln_api_requests_total has %d series, want 2 (no series for an unknown path)", n)
	}
}

// Every metric of kiln's is named by convention: kiln_ prefix, a help
// text, counters ending in _total.
func TestNames(t *testing.T) {
	m := metrics.New(metrics.Config{Builders: func() []builder.Status { return nil }})
	m.OnAcquire(time.Millisecond, true, nil)
	m.ObserveStore("query", time.Millisecond)
	m.BuildEnded(build.Build{Status: build.Succeeded, StartedAt: time.Now()})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	kiln := 0
	for name, f := range fams {
		if !strings.HasPrefix(name, "kiln_") {
			continue
		}
		kiln++
		if f.GetHelp() == "" {
			t.Errorf("%s has no help", name)
		}
		if isCounter := f.GetType().String() == "COUNTER"; isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %s: counters, and only they, end in _total", name, f.GetType())
		}
	}
	if kiln < 14 {
		t.Errorf("%d kiln_ metrics exposed, want every one", kiln)
	}
}

type fakeExport struct{}

func (fakeExport) Dropped() uint64 { return 3 }
func (fakeExport) Lost() uint64    { return 1 }
func (fakeExport) Pending() int    { return 42 }

// The ClickHouse export's counters show once it is watched.
func TestWatchExport(t *testing.T) {
	m := metrics.New(metrics.Config{})
	m.WatchExport(fakeExport{})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{"kiln_clickhouse_rows_dropped_total 3", "kiln_clickhouse_builds_unqueued_total 1", "kiln_clickhouse_rows_pending 42"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
