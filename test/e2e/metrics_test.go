package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMetrics reads url (a /metrics) with token (none if "") and parses
// it as Prometheus does; anything unparsable fails the test.
func scrapeMetrics(t *testing.T, url, token string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %.300s", url, res.StatusCode, body)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET %s: Content-Type %q, want Prometheus text (text/plain; version=0.0.4)", url, ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("GET %s is not Prometheus text: %v\n%.2000s", url, err, body)
	}
	return fams
}

// metricValue is the value of the series of family name with exactly
// these labels (a histogram's sample count), and whether it exists.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels)/2 {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// metricSum sums every series of a family (histograms: sample counts).
func metricSum(fams map[string]*dto.MetricFamily, name string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

const metricsDockerfile = baseStages + `FROM busybox
COPY data.txt /data.txt
RUN wc -c /data.txt > /size
`

// An operator scrapes /metrics on the admin listener before and after a
// build, a source build and a registry push, and sees what happened: one
// client build and one source build started and succeeded, their
// durations (and the source build's queue wait) observed, their steps
// counted, the context's upload, bytes pushed to and pulled from the
// registry, one CreateBuild call.
func TestMetricsBeforeAndAfterABuild(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--admin-addr", "127.0.0.1:0")
	s.requireRegistry(t)
	url := "http://" + connAdminAddr(t, s) + "/metrics"
	proj := s.createProject(t, "metrics")
	dir := writeContext(t, map[string]string{"Dockerfile": metricsDockerfile, "data.txt": "metrics test " + t.Name()})

	before := scrapeMetrics(t, url, "")
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "kiln_builders", "kiln_builds_started_total"} {
		if before[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", ".")
	// A source build: kiln builds an uploaded copy of the context itself.
	id := strings.TrimSpace(s.mustKiln(t, dir, "build", "--detach", "--customer", "metrics-co", "--progress", "quiet", ".").Stdout)
	if logs := s.kiln(t, dir, nil, "builds", "logs", "-f", id); logs.Err != nil || !strings.Contains(logs.Stdout, "succeeded") {
		t.Fatalf("source build %s: %v\n%s\n%s", id, logs.Err, logs.Stdout, tail(logs.Stderr, 3000))
	}
	ref := s.registryHost() + "/" + proj + "/app:v1"
	if err := pushRandom(t, ref, s.Token); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	r, _ := name.ParseReference(ref)
	img, err := remote.Image(r, remote.WithContext(t.Context()), remote.WithAuth(&authn.Basic{Username: "x-token", Password: s.Token}))
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	pulled, _ := io.Copy(io.Discard, rc)
	rc.Close()

	// Steps are counted once the follower is done with the build (about
	// 12 s after its end): until then the other deltas are already there.
	var after map[string]*dto.MetricFamily
	eventually(t, 60*time.Second, "both builds' steps in kiln_build_steps_total", func() bool {
		after = scrapeMetrics(t, url, "")
		moved := func(kind string) bool {
			sum := func(fams map[string]*dto.MetricFamily) float64 {
				c, _ := metricValue(fams, "kiln_build_steps_total", "kind", kind, "result", "cached")
				e, _ := metricValue(fams, "kiln_build_steps_total", "kind", kind, "result", "executed")
				return c + e
			}
			return sum(after) > sum(before)
		}
		return moved("client") && moved("source")
	})

	delta := func(name string, labels ...string) float64 {
		b, _ := metricValue(before, name, labels...)
		a, ok := metricValue(after, name, labels...)
		if !ok {
			t.Errorf("/metrics after the build lacks %s%v", name, labels)
		}
		return a - b
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"kiln_builds_started_total", []string{"kind", "client"}, 1},
		{"kiln_builds_created_total", []string{"kind", "client"}, 1},
		{"kiln_builds_finished_total", []string{"kind", "client", "status", "succeeded"}, 1},
		{"kiln_builds_finished_total", []string{"kind", "client", "status", "failed"}, 0},
		{"kiln_build_duration_seconds", []string{"kind", "client", "status", "succeeded"}, 1},
		{"kiln_builds_created_total", []string{"kind", "source"}, 1},
		{"kiln_builds_started_total", []string{"kind", "source"}, 1},
		{"kiln_builds_finished_total", []string{"kind", "source", "status", "succeeded"}, 1},
		{"kiln_build_duration_seconds", []string{"kind", "source", "status", "succeeded"}, 1},
		{"kiln_build_queue_wait_seconds", nil, 1},
		{"kiln_api_requests_total", []string{"procedure", "/depot.cli.v1.BuildService/CreateBuild", "code", "ok"}, 1},
		{"kiln_api_requests_total", []string{"procedure", "/depot.cli.v1.BuildService/FinishBuild", "code", "ok"}, 1},
	} {
		if got := delta(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The build's four Dockerfile steps (COPY busybox and RUN --install
	// in the busybox stage, COPY data.txt and RUN wc) ran uncached.
	if got := delta("kiln_build_steps_total", "kind", "client", "result", "executed"); got != 4 {
		t.Errorf("kiln_build_steps_total{result=executed} moved by %v, want the build's 4 Dockerfile steps", got)
	}
	if got := delta("kiln_build_steps_total", "kind", "client", "result", "cached"); got != 0 {
		t.Errorf("kiln_build_steps_total{result=cached} moved by %v, want 0 (a first build)", got)
	}
	// The source build ran the same steps: its builder's cache has them.
	if c, e := delta("kiln_build_steps_total", "kind", "source", "result", "cached"), delta("kiln_build_steps_total", "kind", "source", "result", "executed"); c+e != 4 {
		t.Errorf("kiln_build_steps_total{kind=source} moved by %v cached + %v executed, want the build's 4 steps", c, e)
	}
	if got := delta("kiln_context_upload_bytes_total"); got < 100<<10 {
		t.Errorf("kiln_context_upload_bytes_total grew by %v, want the uploaded context (busybox: hundreds of KiB)", got)
	}
	if got := delta("kiln_registry_pushed_bytes_total", "kind", "blob"); got < float64(pulled) {
		t.Errorf("kiln_registry_pushed_bytes_total{kind=blob} grew by %v, want at least the pushed layer's %d bytes", got, pulled)
	}
	if got := delta("kiln_registry_pushed_bytes_total", "kind", "manifest"); got <= 0 {
		t.Errorf("kiln_registry_pushed_bytes_total{kind=manifest} grew by %v, want the manifest's bytes", got)
	}
	if got := delta("kiln_registry_pulled_bytes_total", "kind", "blob"); got < float64(pulled) {
		t.Errorf("kiln_registry_pulled_bytes_total{kind=blob} grew by %v, want at least the pulled layer's %d bytes", got, pulled)
	}
	if got := delta("kiln_builder_acquire_duration_seconds", "result", "ready"); got < 1 {
		t.Errorf("kiln_builder_acquire_duration_seconds{result=ready} moved by %v, want the build's acquisition", got)
	}
	if got := metricSum(after, "kiln_store_operation_duration_seconds") - metricSum(before, "kiln_store_operation_duration_seconds"); got <= 0 {
		t.Errorf("kiln_store_operation_duration_seconds did not move over a build")
	}
	// The builders (the project's, and the customer's project's the
	// source build made) are still up, no longer building: idle.
	if n, _ := metricValue(after, "kiln_builders", "state", "idle"); n != 2 {
		t.Errorf("kiln_builders{state=idle} = %v after the builds, want their 2 builders", n)
	}
	if n, _ := metricValue(after, "kiln_builders", "state", "running"); n != 0 {
		t.Errorf("kiln_builders{state=running} = %v after the builds, want 0", n)
	}
	// No label names a project or a build.
	for name, f := range after {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), proj) {
					t.Errorf("%s has a label %s=%q naming the project", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// /metrics keeps answering while clients send kiln garbage, and the
// garbage adds no series: labels stay bounded. On the main listener it
// answers organization tokens only.
func TestMetricsUnderBadInput(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--admin-addr", "127.0.0.1:0")
	url := "http://" + connAdminAddr(t, s) + "/metrics"
	proj := s.createProject(t, "metrics-bad")
	before := scrapeMetrics(t, url, "")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	const forged = "kiln_org_forged"
	hostile := []struct{ method, path, token, ctype, body string }{
		{"POST", "/depot.cli.v1.BuildService/CreateBuild", forged, "application/json", `{}`},
		{"POST", "/depot.cli.v1.BuildService/CreateBuild", s.Token, "application/json", `{"projectId": "no-such-project"}`},
		{"POST", "/depot.cli.v1.BuildService/CreateBuild", s.Token, "application/json", `{"projectId": 7`},
		{"POST", "/depot.cli.v1.BuildService/CreateBuild", s.Token, "application/proto", "\xff\xff\xff\xff"},
		{"POST", "/depot.cli.v1.BuildService/NoSuchMethod", s.Token, "application/json", `{}`},
		{"POST", "/no.such.Service/Call", forged, "application/json", `{}`},
		{"POST", "/no.such.Service/Call", s.Token, "application/json", `{}`},
		{"GET", "/v2/" + proj + "/../../etc/manifests/x", forged, "", ""},
		{"PUT", "/v2/" + proj + "/app/blobs/uploads/nope?digest=sha256:zz", s.Token, "application/octet-stream", strings.Repeat("A", 4096)},
		{"GET", "/metrics?" + strings.Repeat("x", 2000), forged, "", ""}, // the main listener
	}
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				h := hostile[(n+i)%len(hostile)]
				req, _ := http.NewRequest(h.method, s.URL+h.path+fmt.Sprintf("%s%d", sep(h.path), n), strings.NewReader(h.body))
				if h.ctype != "" {
					req.Header.Set("Content-Type", h.ctype)
				}
				req.Header.Set("Authorization", "Bearer "+h.token)
				if res, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		}()
	}
	for range 20 {
		scrapeMetrics(t, url, "") // fails the test if it does not answer, or not in Prometheus text
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	after := scrapeMetrics(t, url, "")

	// The refusals are counted under the procedures kiln has (a forged
	// token is refused before the body is read; an unknown project by the
	// handler), and no client-chosen path becomes a label.
	for _, code := range []string{"unauthenticated", "not_found"} {
		if got, _ := metricValue(after, "kiln_api_requests_total", "procedure", "/depot.cli.v1.BuildService/CreateBuild", "code", code); got < 1 {
			t.Errorf("kiln_api_requests_total{CreateBuild, %s} = %v, want the refused calls", code, got)
		}
	}
	for _, m := range after["kiln_api_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "procedure" && (strings.Contains(l.GetValue(), "NoSuch") || strings.Contains(l.GetValue(), "no.such")) {
				t.Errorf("a series for an unknown procedure: %q", l.GetValue())
			}
		}
	}
	if n, m := len(after), len(before); n > m+5 {
		t.Errorf("/metrics grew from %d to %d families under garbage", m, n)
	}

	// The main listener: an org token reads the metrics, a project token
	// and no token do not.
	scrapeMetrics(t, s.URL+"/metrics", s.Token)
	for _, tok := range []string{"", s.projectToken(t, proj)} {
		req, _ := http.NewRequest("GET", s.URL+"/metrics", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized && res.StatusCode != http.StatusForbidden {
			t.Errorf("GET /metrics on the main listener with token %q: %d %.200s, want 401 or 403", tok, res.StatusCode, body)
		}
		if bytes.Contains(body, []byte("kiln_builds")) {
			t.Errorf("GET /metrics on the main listener with token %q answered the metrics", tok)
		}
	}
	// And the server still builds.
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN true\n"})
	s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", ".")
}

// sep is what joins a counter to path as a cache-busting query.
func sep(path string) string {
	if strings.Contains(path, "?") {
		return "&n="
	}
	return "?n="
}
