package server

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kiln-dev/kiln/internal/metrics"
)

func adminTestServer(t *testing.T, addr string, optional bool, log io.Writer) *Server {
	t.Helper()
	return &Server{
		cfg: Config{DataDir: t.TempDir(), AdminAddr: addr, AdminOptional: optional,
			Logger: slog.New(slog.NewTextHandler(log, nil))},
		http:    &http.Server{},
		metrics: metrics.New(metrics.Config{}),
	}
}

// An operator reads goroutines from the admin listener, found through
// DATA/admin.addr; the file goes when the listener stops.
func TestAdminListenerServesProfiles(t *testing.T) {
	s := adminTestServer(t, "127.0.0.1:0", false, io.Discard)
	if err := s.listenAdmin(); err != nil {
		t.Fatal(err)
	}
	s.serveAdmin()
	b, err := os.ReadFile(AdminAddrPath(s.cfg.DataDir))
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSpace(string(b))
	if addr != s.AdminAddr().String() {
		t.Fatalf("admin.addr says %q, the listener is at %s", addr, s.AdminAddr())
	}
	res, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !bytes.HasPrefix(body, []byte("goroutine profile: total ")) {
		t.Fatalf("GET /debug/pprof/goroutine: %d %.200s", res.StatusCode, body)
	}
	// The metrics, in Prometheus's text format, with the process's own.
	res, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || err != nil {
		t.Fatalf("GET /metrics: %d, %v", res.StatusCode, err)
	}
	for _, name := range []string{"kiln_builds_started_total", "kiln_registry_pushed_bytes_total", "go_goroutines", "process_resident_memory_bytes"} {
		if families[name] == nil {
			t.Errorf("GET /metrics has no %s", name)
		}
	}
	// Only the profiles and the metrics: nothing of the API answers there.
	if res, err := http.Get("http://" + addr + "/healthz"); err != nil || res.StatusCode != http.StatusNotFound {
		t.Errorf("GET /healthz on the admin listener: %v %v, want 404", res.StatusCode, err)
	}
	s.shutdownAdmin()
	if _, err := os.Stat(AdminAddrPath(s.cfg.DataDir)); !os.IsNotExist(err) {
		t.Errorf("admin.addr after shutdown: %v", err)
	}
	if _, err := http.Get("http://" + addr + "/debug/pprof/"); err == nil {
		t.Errorf("the admin listener still answers after shutdown")
	}
}

// The default address taken (another kiln serve on the machine): kiln
// serves without the admin listener and says how to get one. An address
// the operator chose must bind, and the error says what to do.
func TestAdminListenerAddressTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	var log bytes.Buffer
	s := adminTestServer(t, held.Addr().String(), true, &log)
	if err := s.listenAdmin(); err != nil {
		t.Fatalf("default address taken: %v, want kiln to serve without the admin listener", err)
	}
	if s.AdminAddr() != nil || !strings.Contains(log.String(), "--admin-addr") {
		t.Errorf("listener %v; log %q: want none, and a warning naming --admin-addr", s.AdminAddr(), log.String())
	}
	if _, err := os.Stat(AdminAddrPath(s.cfg.DataDir)); !os.IsNotExist(err) {
		t.Errorf("admin.addr written without a listener: %v", err)
	}

	s = adminTestServer(t, held.Addr().String(), false, io.Discard)
	err = s.listenAdmin()
	if err == nil || !strings.Contains(err.Error(), "--admin-addr "+held.Addr().String()) || !strings.Contains(err.Error(), "choose another address") {
		t.Fatalf("chosen address taken: %v, want an error naming --admin-addr and what to do", err)
	}

	s = adminTestServer(t, "", false, io.Discard)
	if err := s.listenAdmin(); err != nil || s.AdminAddr() != nil {
		t.Fatalf("--admin-addr \"\": %v, %v; want no listener", err, s.AdminAddr())
	}
}
