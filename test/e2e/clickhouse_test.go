package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// clickhouse is a real clickhouse-server (Debian's package) run by a test
// in a temporary directory, on loopback ports of its own; no system
// service is involved.
type clickhouse struct {
	dir     string
	http    string // host:port of the HTTP interface
	cmd     *exec.Cmd
	exited  chan struct{}
	started time.Duration // how long the last start took to answer /ping
	version string
}

const clickhouseConfig = `<yandex>
  <logger><level>warning</level><log>%[1]s/log/server.log</log><errorlog>%[1]s/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>%[2]s</http_port>
  <tcp_port>%[3]s</tcp_port>
  <path>%[1]s/data/</path>
  <tmp_path>%[1]s/tmp/</tmp_path>
  <user_files_path>%[1]s/user_files/</user_files_path>
  <format_schema_path>%[1]s/format_schemas/</format_schema_path>
  <users_config>%[1]s/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
`

const clickhouseUsers = `<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
`

// startClickHouse runs clickhouse-server until the test ends (stopped by
// its PID). Without the package the test fails, or skips with
// KILN_SKIP_MISSING=1.
func startClickHouse(t *testing.T) *clickhouse {
	t.Helper()
	if _, err := exec.LookPath("clickhouse-server"); err != nil {
		testenv.Missing(t, "clickhouse-server is required (apt-get install clickhouse-server, or run hack/setup.sh): %v", err)
	}
	dir, err := os.MkdirTemp("", runTag+"clickhouse-")
	if err != nil {
		t.Fatal(err)
	}
	c := &clickhouse{dir: dir, http: freeAddr(t)}
	_, httpPort, _ := strings.Cut(c.http, ":")
	_, tcpPort, _ := strings.Cut(freeAddr(t), ":")
	os.MkdirAll(filepath.Join(dir, "log"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(fmt.Sprintf(clickhouseConfig, dir, httpPort, tcpPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.xml"), []byte(clickhouseUsers), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "log", "error.log"))
			t.Logf("clickhouse-server error log:\n%s", tail(string(b), 4000))
		}
		os.RemoveAll(dir)
	})
	c.start(t)
	return c
}

// start runs the server on its directory and ports and waits (up to 60 s)
// until it answers.
func (c *clickhouse) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command("clickhouse-server", "--config-file="+filepath.Join(c.dir, "config.xml"))
	out, err := os.OpenFile(filepath.Join(c.dir, "log", "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start clickhouse-server: %v", err)
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); close(exited) }(c.cmd, c.exited)
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := http.Get("http://" + c.http + "/ping")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		select {
		case <-c.exited:
			b, _ := os.ReadFile(filepath.Join(c.dir, "log", "error.log"))
			t.Fatalf("clickhouse-server exited at start:\n%s", tail(string(b), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("clickhouse-server did not answer /ping within 60s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.started = time.Since(began)
	if res, err := http.Get("http://" + c.http + "/?query=SELECT%20version()"); err == nil {
		v, _ := io.ReadAll(res.Body)
		res.Body.Close()
		c.version = strings.TrimSpace(string(v))
	}
}

// kill ends the server with SIGKILL (stopped or not) and waits for it.
func (c *clickhouse) kill() {
	if c.cmd == nil {
		return
	}
	syscall.Kill(c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.exited
	c.cmd = nil
}

// signal sends sig to the server's process.
func (c *clickhouse) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(c.cmd.Process.Pid, sig); err != nil {
		t.Fatal(err)
	}
}

// rows runs a query in database kiln and decodes its JSONEachRow answer.
func (c *clickhouse) rows(t *testing.T, query string) []map[string]any {
	t.Helper()
	res, err := http.Post("http://"+c.http+"/?database=kiln", "text/plain", strings.NewReader(query+" FORMAT JSONEachRow"))
	if err != nil {
		t.Fatalf("clickhouse query %q: %v", query, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("clickhouse query %q: HTTP %d: %s", query, res.StatusCode, body)
	}
	var out []map[string]any
	for _, line := range bytes.Split(body, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("clickhouse answer %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// exec runs a statement in database kiln.
func (c *clickhouse) exec(t *testing.T, stmt string) {
	t.Helper()
	res, err := http.Post("http://"+c.http+"/?database=kiln", "text/plain", strings.NewReader(stmt))
	if err != nil {
		t.Fatalf("clickhouse %q: %v", stmt, err)
	}
	defer res.Body.Close()
	if body, _ := io.ReadAll(res.Body); res.StatusCode != 200 {
		t.Fatalf("clickhouse %q: HTTP %d: %s", stmt, res.StatusCode, body)
	}
}

// count runs a query whose one row has one column n.
func (c *clickhouse) count(t *testing.T, query string) int {
	t.Helper()
	rows := c.rows(t, query)
	if len(rows) != 1 {
		t.Fatalf("query %q: %d rows", query, len(rows))
	}
	var n int
	fmt.Sscan(fmt.Sprint(rows[0]["n"]), &n)
	return n
}

func sq(s string) string { return "'" + strings.ReplaceAll(s, "'", "\\'") + "'" }

// exportedSteps is what ClickHouse holds of a build's steps, one per key.
func (c *clickhouse) exportedSteps(t *testing.T, buildID string) []string {
	t.Helper()
	var out []string
	for _, r := range c.rows(t, "SELECT digest, name, cached FROM kiln_steps FINAL WHERE build_id = "+sq(buildID)) {
		out = append(out, fmt.Sprintf("%v %v cached=%v", r["digest"], r["name"], r["cached"]))
	}
	sort.Strings(out)
	return out
}

// storedSteps is what kiln stored of a build's steps (GetBuildSteps), in
// the same form.
func storedSteps(t *testing.T, s *server, project, buildID string) []string {
	t.Helper()
	var out []string
	for _, st := range s.steps(t, project, buildID) {
		cached := 0
		if st.CacheState.String() == "CACHE_STATE_CACHED" {
			cached = 1
		}
		out = append(out, fmt.Sprintf("%s %s cached=%d", st.Digest, st.Name, cached))
	}
	sort.Strings(out)
	return out
}

// kilnBuildTimed runs one kiln build of dir and returns its id and how
// long the CLI took.
func kilnBuildTimed(t *testing.T, s *server, proj, dir string) (string, time.Duration) {
	t.Helper()
	before := s.latestBuildOrEmpty(t, proj)
	r := s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", "-o", "type=local,dest="+filepath.Join(t.TempDir(), "out"), ".")
	id := s.latestBuild(t, proj)
	if id == before {
		t.Fatalf("no new build after kiln build:\n%s", tail(r.Stderr, 2000))
	}
	return id, r.Took
}

func (s *server) latestBuildOrEmpty(t *testing.T, project string) string {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds(%s): %v", project, err)
	}
	if len(res.Msg.Builds) == 0 {
		return ""
	}
	return res.Msg.Builds[0].Id
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Finished builds, their steps and logs reach ClickHouse (Debian's
// 18.16, run here) and equal what kiln stored; while ClickHouse is
// stopped and then down, builds take as long as with it up, their rows
// wait on disk through a kiln restart, and arrive once it is back, once.
// Not parallel: depot-go reads its URL from the environment (t.Setenv),
// and the timings compare builds with and without ClickHouse.
func TestClickHouseExport(t *testing.T) {
	ch := startClickHouse(t)
	t.Logf("clickhouse-server %s answered in %s", ch.version, ch.started.Round(time.Millisecond))
	s := startServer(t, "--clickhouse-url", "http://"+ch.http+"/?database=kiln", "--clickhouse-retention", "90d")
	proj := s.createProject(t, "insights")
	t.Setenv("DEPOT_API_URL", s.URL)

	// A few builds, each kind of client: kiln build, a depot-protocol
	// client that reports nothing (depot-go), a source build, kiln bake.
	dir := writeContext(t, map[string]string{"Dockerfile": stepsDockerfile, "data.txt": "ch-0\n"})
	var ids []string
	up := []time.Duration{}
	id, _ := kilnBuildTimed(t, s, proj, dir)
	ids = append(ids, id)
	silent, _ := silentBuild(t, s, proj, dir) // cached rebuild through depot-go
	ids = append(ids, silent)
	src := s.createSource(t, s.Token, customer("insights-source"), contextArchive(t, map[string]string{"Dockerfile": stepsDockerfile, "data.txt": "ch-src\n"}))
	if w := s.watch(t, s.Token, src.BuildId, 4*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("source build ended %v: %s", w.last.Status, w.last.Error)
	}
	bakeDir := writeContext(t, map[string]string{"Dockerfile": stepsDockerfile, "data.txt": "ch-bake\n",
		"docker-bake.hcl": `target "default" { dockerfile = "Dockerfile" }`})
	writeKilnJSON(t, bakeDir, proj)
	if r := s.kiln(t, bakeDir, nil, "bake", "--progress", "plain"); r.Err != nil {
		t.Fatalf("kiln bake: %v\n%s", r.Err, tail(r.Stderr, 4000))
	}
	bakeID := s.latestBuild(t, proj)
	if slices.Contains(ids, bakeID) {
		t.Fatal("kiln bake made no build")
	}
	ids = append(ids, bakeID)
	// Builds with ClickHouse up, to time against: a new data file each
	// time, so COPY and RUN run and print.
	var upIDs []string
	for i := 1; i <= 5; i++ {
		os.WriteFile(filepath.Join(dir, "data.txt"), []byte(fmt.Sprintf("ch-up-%d\n", i)), 0o644)
		id, took := kilnBuildTimed(t, s, proj, dir)
		upIDs = append(upIDs, id)
		up = append(up, took)
	}
	ids = append(ids, upIDs...)
	projects := map[string]string{src.BuildId: src.ProjectId}
	for _, id := range ids {
		projects[id] = proj
	}
	all := append(slices.Clone(ids), src.BuildId)
	eventually(t, 90*time.Second, "every build in kiln_builds", func() bool {
		return ch.count(t, "SELECT count() AS n FROM kiln_builds FINAL WHERE build_id IN ("+quoteAll(all)+")") == len(all)
	})
	for _, id := range all {
		want := storedSteps(t, s, projects[id], id)
		if got := ch.exportedSteps(t, id); !slices.Equal(got, want) || len(want) == 0 {
			t.Errorf("build %s: kiln_steps =\n  %s\nkiln stored\n  %s", id, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
	// The RUN step's log line, as kiln stored it.
	for _, id := range upIDs {
		n := ch.count(t, "SELECT count() AS n FROM kiln_step_logs FINAL WHERE build_id = "+sq(id)+" AND position(message, 'builder says: ch-up-') > 0")
		if n != 1 {
			t.Errorf("build %s: %d exported log lines say \"builder says\", want 1", id, n)
		}
	}
	b := ch.rows(t, "SELECT status, total_steps, cached_steps, kind FROM kiln_builds FINAL WHERE build_id = "+sq(silent))
	if len(b) != 1 || b[0]["status"] != "succeeded" || fmt.Sprint(b[0]["total_steps"]) != "4" || fmt.Sprint(b[0]["cached_steps"]) != "4" {
		t.Errorf("cached depot-go build's row = %v; want succeeded, 4 of 4 steps cached", b)
	}

	// A build of January 2020, long past the 90 days' retention: kiln
	// drops its month's partitions when it starts (and hourly).
	ch.exec(t, `INSERT INTO kiln_builds (build_id, project_id, created_at, version) VALUES ('old', 'p-old', toDateTime('2020-01-15 00:00:00', 'UTC'), 1)`)
	ch.exec(t, `INSERT INTO kiln_steps (build_id, project_id, build_created_at, digest, version) VALUES ('old', 'p-old', toDateTime('2020-01-15 00:00:00', 'UTC'), 'sha256:old', 1)`)

	// ClickHouse stopped (SIGSTOP: connections open, nothing answers) for
	// fifteen builds — from the eleventh on, kiln's insert of the first
	// ones' rows hangs in it — then killed (refused) for five more.
	ch.signal(t, syscall.SIGSTOP)
	var down []time.Duration
	var downIDs []string
	for i := 1; i <= 20; i++ {
		switch i {
		case 11:
			// The first builds' rows are spooled 15 s after they ended, and
			// the sender's insert hangs in the stopped server.
			eventually(t, 60*time.Second, "rows spooled on disk", func() bool {
				segs, _ := filepath.Glob(filepath.Join(s.Data, "telemetry", "spool", "*.rows"))
				return len(segs) > 0
			})
			time.Sleep(3 * time.Second)
		case 16:
			ch.kill()
		}
		os.WriteFile(filepath.Join(dir, "data.txt"), []byte(fmt.Sprintf("ch-down-%d\n", i)), 0o644)
		id, took := kilnBuildTimed(t, s, proj, dir)
		downIDs = append(downIDs, id)
		down = append(down, took)
	}
	t.Logf("kiln build with ClickHouse up: median %s, max %s (%v)", median(up), slices.Max(up), up)
	t.Logf("kiln build with ClickHouse stopped/down: median %s, max %s (%v)", median(down), slices.Max(down), down)
	// A build that waited on the export would wait for its 30 s request
	// timeout at least; noise on a busy machine is a few seconds.
	limit := 2*median(up) + 5*time.Second
	for i, d := range down {
		if d > limit {
			t.Errorf("build %d with ClickHouse down took %s; with it up the median was %s", i+1, d, median(up))
		}
	}

	// The rows wait on disk (DATA/telemetry), or in the queue of builds
	// to read, through a restart of kiln.
	if segs, _ := filepath.Glob(filepath.Join(s.Data, "telemetry", "spool", "*.rows")); len(segs) == 0 {
		t.Fatal("no rows wait in DATA/telemetry/spool while ClickHouse is down")
	}
	s.restart(t)
	ch.start(t)
	t.Logf("clickhouse-server restarted in %s", ch.started.Round(time.Millisecond))
	eventually(t, 120*time.Second, "the 20 builds' rows in ClickHouse", func() bool {
		return ch.count(t, "SELECT count() AS n FROM kiln_builds WHERE build_id IN ("+quoteAll(downIDs)+")") >= len(downIDs)
	})
	time.Sleep(3 * time.Second) // anything sent twice would show by now
	for _, id := range downIDs {
		want := storedSteps(t, s, proj, id)
		if got := ch.exportedSteps(t, id); !slices.Equal(got, want) {
			t.Errorf("build %s: kiln_steps =\n  %s\nkiln stored\n  %s", id, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
	eventually(t, 30*time.Second, "the partitions of January 2020 dropped", func() bool {
		return ch.count(t, "SELECT count() AS n FROM system.parts WHERE database = 'kiln' AND partition = '202001' AND active") == 0
	})
	// Once: no key twice, even before ClickHouse merges parts.
	for _, tbl := range []struct{ name, key string }{{"kiln_builds", "build_id"}, {"kiln_steps", "build_id, digest"}, {"kiln_step_logs", "build_id, seq"}} {
		raw := ch.count(t, "SELECT count() AS n FROM "+tbl.name+" WHERE project_id = "+sq(proj))
		keys := ch.count(t, "SELECT count() AS n FROM (SELECT DISTINCT "+tbl.key+" FROM "+tbl.name+" WHERE project_id = "+sq(proj)+")")
		t.Logf("%s: %d rows, %d keys", tbl.name, raw, keys)
		if raw != keys || keys == 0 {
			t.Errorf("%s holds %d rows for %d keys; want each once", tbl.name, raw, keys)
		}
	}
	if n := ch.count(t, "SELECT count() AS n FROM kiln_builds FINAL WHERE project_id = "+sq(proj)); n != len(ids)+len(downIDs) {
		t.Errorf("kiln_builds holds %d builds of the project; want %d", n, len(ids)+len(downIDs))
	}

	// What kiln said of the export (once per outage, not per try).
	if log, err := os.ReadFile(s.log); err == nil {
		var said []string
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "ClickHouse") || strings.Contains(l, "telemetry") {
				said = append(said, tail(l, 300))
			}
		}
		t.Logf("kiln serve on the export:\n  %s", strings.Join(said, "\n  "))
	}

	// The ready queries of docs/insights.md run.
	for _, q := range []string{insightsSlowest, insightsHitRate, insightsSaved} {
		if rows := ch.rows(t, q); len(rows) == 0 {
			t.Errorf("docs query returned nothing:\n%s", q)
		}
	}
}

func quoteAll(ids []string) string {
	var q []string
	for _, id := range ids {
		q = append(q, sq(id))
	}
	return strings.Join(q, ", ")
}

// The ready queries of docs/insights.md (kept equal to the docs).
const (
	insightsSlowest = `SELECT project_id, name, count() AS runs, round(avg(duration_ms)) AS avg_ms, max(duration_ms) AS max_ms
FROM kiln_steps FINAL
WHERE counted AND NOT cached AND build_created_at > now() - INTERVAL 30 DAY
GROUP BY project_id, name
ORDER BY project_id, avg_ms DESC
LIMIT 10 BY project_id`
	insightsHitRate = `SELECT project_id, toDate(build_created_at) AS day, sum(cached) AS cached_steps, count() AS steps,
  round(100 * cached_steps / steps, 1) AS hit_rate_pct
FROM kiln_steps FINAL
WHERE counted
GROUP BY project_id, day
ORDER BY project_id, day`
	insightsSaved = `SELECT project_id, toDate(created_at) AS day, count() AS builds,
  round(sum(saved_ms) / 1000) AS saved_s, round(sum(duration_ms) / 1000) AS build_s
FROM kiln_builds FINAL
GROUP BY project_id, day
ORDER BY project_id, day`
)

// A --clickhouse-url kiln cannot use stops kiln serve at start with a
// message that says what is wrong, and the password is not repeated.
func TestClickHouseURLIsChecked(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"clickhouse://u:hunter2@127.0.0.1:9000/kiln", "http://127.0.0.1:8123/?database=kiln;drop"} {
		cmd := exec.Command(kilnBin, "serve", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--admin-addr", "", "--buildkitd", buildkitd, "--clickhouse-url", u)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("kiln serve --clickhouse-url %s started", u)
		}
		if !strings.Contains(string(out), "--clickhouse-url") || strings.Contains(string(out), "hunter2") {
			t.Errorf("kiln serve --clickhouse-url %s said:\n%s", u, tail(string(out), 2000))
		}
	}
}
