package telemetry

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/redact"
)

// fakeSource is a store of a few finished builds.
type fakeSource struct {
	mu     sync.Mutex
	builds map[string]build.Build
}

func (f *fakeSource) GetBuild(_ context.Context, id string) (build.Build, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.builds[id]
	if !ok {
		return build.Build{}, fmt.Errorf("build %q: %w", id, errdefs.ErrNotFound)
	}
	return b, nil
}

// put stores b: the exporter's worker reads builds concurrently.
func (f *fakeSource) put(b build.Build) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.builds[b.ID] = b
}

func (f *fakeSource) ListSteps(_ context.Context, id string) ([]build.Step, error) {
	now := time.Now()
	return []build.Step{
		{Digest: "sha256:a-" + id, Name: "[1/2] COPY x /x", StartedAt: now, CompletedAt: now.Add(time.Second)},
		{Digest: "sha256:b-" + id, Name: "[2/2] RUN make", Cached: true, StartedAt: now, CompletedAt: now},
	}, nil
}

func (f *fakeSource) ListBuildLogs(_ context.Context, id string, after, limit int) ([]build.LogLine, error) {
	if after > 0 {
		return nil, nil
	}
	return []build.LogLine{{Digest: "sha256:a-" + id, Seq: 1, At: time.Now(), Message: "hello\n"}}, nil
}

func (f *fakeSource) LastUncachedStepDurations(context.Context, string, []string, time.Time) (map[string]time.Duration, error) {
	return map[string]time.Duration{"[2/2] RUN make": 3 * time.Second}, nil
}

// fakeClickHouse answers ClickHouse's HTTP interface as far as the
// exporter uses it, recording the rows inserted; down makes it answer 503.
type fakeClickHouse struct {
	mu     sync.Mutex
	down   bool
	refuse bool                // answer inserts as 18.16 answers rows it cannot parse
	rows   map[string][]string // table → JSON rows
	insert int                 // INSERT requests answered 200
}

func (f *fakeClickHouse) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		http.Error(w, "Service Unavailable", http.StatusServiceUnavailable)
		return
	}
	body, _ := io.ReadAll(r.Body)
	q := r.URL.Query().Get("query")
	if f.refuse && strings.HasPrefix(q, "INSERT") {
		http.Error(w, "Code: 27, e.displayText() = DB::Exception: Cannot parse input", http.StatusInternalServerError)
		return
	}
	if table, ok := strings.CutPrefix(q, "INSERT INTO "); ok {
		table, _, _ = strings.Cut(table, " ")
		for _, line := range bytes.Split(bytes.TrimSpace(body), []byte("\n")) {
			f.rows[table] = append(f.rows[table], string(line))
		}
		f.insert++
	}
	// CREATE, system.columns (every column is there), system.parts (none).
	if bytes.Contains(body, []byte("system.columns")) {
		for _, t := range tables {
			if bytes.Contains(body, []byte("'"+t.name+"'")) {
				for _, c := range t.columns {
					fmt.Fprintf(w, "{\"name\":%q}\n", c.name)
				}
			}
		}
	}
}

func (f *fakeClickHouse) count(table string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.rows[table])
}

func newExporter(t *testing.T, dir, url string, src Source) *Exporter {
	t.Helper()
	e, err := New(Config{URL: url, Dir: dir, Settle: 10 * time.Millisecond, Flush: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestExporterDeliversEveryRowOnceAfterClickHouseComesBack(t *testing.T) {
	src := &fakeSource{builds: map[string]build.Build{}}
	ch := &fakeClickHouse{rows: map[string][]string{}, down: true}
	srv := httptest.NewServer(ch)
	defer srv.Close()
	dir := t.TempDir()
	e := newExporter(t, dir, srv.URL+"/?database=kiln", src)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		b := build.Build{ID: fmt.Sprint("b", i), ProjectID: "p", Status: build.Succeeded, CreatedAt: time.Now()}
		src.put(b)
		e.BuildEnded(b)
	}
	// Down: the rows wait in the spool (1 build + 2 steps + 1 log line each).
	waitFor(t, "rows spooled", func() bool { return e.Pending() == 20 })
	// kiln restarts while ClickHouse is down: the spool is read again.
	e.Close()
	e = newExporter(t, dir, srv.URL+"/?database=kiln", src)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ch.mu.Lock()
	ch.down = false
	ch.mu.Unlock()
	waitFor(t, "rows delivered", func() bool { return ch.count(TableBuilds) == 5 && e.Pending() == 0 })
	if ch.count(TableSteps) != 10 || ch.count(TableStepLogs) != 5 {
		t.Fatalf("delivered %d steps and %d log lines; want 10 and 5", ch.count(TableSteps), ch.count(TableStepLogs))
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "spool", "*"+segmentExt))
	if len(segs) != 0 {
		t.Fatalf("delivered segments left on disk: %v", segs)
	}
	ch.mu.Lock()
	steps := strings.Join(ch.rows[TableSteps], "\n")
	ch.mu.Unlock()
	if !strings.Contains(steps, `"saved_ms":3000`) || !strings.Contains(steps, `"counted":1`) {
		t.Errorf("step rows lack the saved time or the counted flag:\n%s", steps)
	}
}

// A build that ended but was not yet read when kiln stopped is exported
// after the restart: the queue is journaled on disk.
func TestExporterResumesBuildsQueuedBeforeARestart(t *testing.T) {
	src := &fakeSource{builds: map[string]build.Build{"q1": {ID: "q1", ProjectID: "p", Status: build.Failed, CreatedAt: time.Now()}}}
	ch := &fakeClickHouse{rows: map[string][]string{}}
	srv := httptest.NewServer(ch)
	defer srv.Close()
	dir := t.TempDir()
	e, err := New(Config{URL: srv.URL, Dir: dir, Settle: time.Hour, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	e.BuildEnded(src.builds["q1"])
	e.Close() // before its settle time: it is only queued
	if ch.count(TableBuilds) != 0 {
		t.Fatal("exported before its settle time")
	}
	journal := filepath.Join(dir, "pending.jsonl")
	data, err := os.ReadFile(journal)
	if err != nil || !strings.Contains(string(data), `"id":"q1"`) {
		t.Fatalf("journal = %q, %v; want q1 queued", data, err)
	}
	// As if the hour had passed while kiln was down.
	os.WriteFile(journal, fmt.Appendf(nil, "{\"id\":\"q1\",\"due\":%d}\n", time.Now().UnixMilli()), 0o600)
	e = newExporter(t, dir, srv.URL, src)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	waitFor(t, "the queued build exported", func() bool { return ch.count(TableBuilds) == 1 })
}

// Rows ClickHouse refuses outright are tried a few times, then set aside
// on disk for an operator and counted as dropped; later rows still go.
func TestExporterSetsAsideRowsClickHouseRefuses(t *testing.T) {
	src := &fakeSource{builds: map[string]build.Build{"r1": {ID: "r1", ProjectID: "p", Status: build.Succeeded, CreatedAt: time.Now()}}}
	ch := &fakeClickHouse{rows: map[string][]string{}, refuse: true}
	srv := httptest.NewServer(ch)
	defer srv.Close()
	dir := t.TempDir()
	e := newExporter(t, dir, srv.URL, src)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.BuildEnded(src.builds["r1"])
	waitFor(t, "the refused rows set aside", func() bool { return e.Dropped() == 4 })
	// One to three segments: the sender may take the steps' rows before the
	// logs' and the build's are spooled.
	if set, _ := filepath.Glob(filepath.Join(dir, "spool", "*.rejected")); len(set) == 0 || len(set) > 3 {
		t.Fatalf("set-aside segments = %v, want the build's", set)
	}
	ch.mu.Lock()
	ch.refuse = false
	ch.mu.Unlock()
	src.put(build.Build{ID: "r2", ProjectID: "p", Status: build.Succeeded, CreatedAt: time.Now()})
	e.BuildEnded(build.Build{ID: "r2"})
	waitFor(t, "the next build's rows", func() bool { return ch.count(TableBuilds) == 1 })
}

// BuildEnded is called on a build's path: it never waits, whatever the
// state of the export (here: nothing consumes the queue at all).
func TestBuildEndedNeverBlocks(t *testing.T) {
	e, err := New(Config{URL: "http://127.0.0.1:1/", Dir: t.TempDir(), Source: &fakeSource{}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	n := cap(e.ended) + 100
	done := make(chan struct{})
	go func() {
		for i := 0; i < n; i++ {
			e.BuildEnded(build.Build{ID: fmt.Sprint(i)})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("BuildEnded blocked with a full queue")
	}
	if e.Lost() != 100 {
		t.Fatalf("lost = %d, want the 100 that did not fit", e.Lost())
	}
}

func TestNewRefusesABadURL(t *testing.T) {
	for _, u := range []string{"clickhouse://x:9000", "http://", "http://h:8123/?database=a;drop", "::"} {
		if _, err := New(Config{URL: u, Dir: t.TempDir(), Source: &fakeSource{}}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	if got := redact.URL("http://u:secret@h:8123/?password=also"); strings.Contains(got, "secret") || strings.Contains(got, "also") {
		t.Errorf("Redact left a password: %s", got)
	}
}

// Under steady load the queue is never empty; the journal is still
// rewritten from it, not left to grow with every build that ended.
func TestExporterCompactsTheJournalUnderSteadyLoad(t *testing.T) {
	src := &fakeSource{builds: map[string]build.Build{}}
	ch := &fakeClickHouse{rows: map[string][]string{}}
	srv := httptest.NewServer(ch)
	defer srv.Close()
	dir := t.TempDir()
	e, err := New(Config{URL: srv.URL, Dir: dir, Settle: 100 * time.Millisecond, Flush: 10 * time.Millisecond, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	e.journalMax = 50
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	journalLines := func() int {
		data, _ := os.ReadFile(filepath.Join(dir, "pending.jsonl"))
		return bytes.Count(data, []byte("\n"))
	}
	// A build ends every 5 ms, each exported 100 ms later: about 20 wait
	// at any time, and 300 end in all (600 lines without compaction).
	most := 0
	for i := range 300 {
		b := build.Build{ID: fmt.Sprint("s", i), ProjectID: "p", Status: build.Succeeded, CreatedAt: time.Now()}
		src.put(b)
		e.BuildEnded(b)
		time.Sleep(5 * time.Millisecond)
		most = max(most, journalLines())
	}
	waitFor(t, "every build exported", func() bool { return ch.count(TableBuilds) == 300 })
	e.Close()
	if most > 200 {
		t.Fatalf("the journal reached %d lines; want it compacted past 50 (and twice the queue)", most)
	}
	// What it holds after is still the truth: nothing is left to export.
	e = newExporter(t, dir, srv.URL, src)
	queue, err := e.loadJournal()
	if err != nil {
		t.Fatal(err)
	}
	e.journal.Close()
	if len(queue) != 0 {
		t.Fatalf("after every build was exported the journal still queues %d", len(queue))
	}
}

// pagedSource is a build with n log lines; it records how many rows the
// spool held each time a page of logs was asked for.
type pagedSource struct {
	fakeSource
	n       int
	spool   *Spool
	pending []int
}

func (p *pagedSource) ListBuildLogs(_ context.Context, id string, after, limit int) ([]build.LogLine, error) {
	rows, _ := p.spool.Pending()
	p.pending = append(p.pending, rows)
	var page []build.LogLine
	for seq := after + 1; seq <= p.n && len(page) < limit; seq++ {
		page = append(page, build.LogLine{Digest: "sha256:a-" + id, Seq: seq, At: time.Now(), Message: "line\n"})
	}
	return page, nil
}

// A build's logs are spooled a page at a time as they are read, never
// gathered in memory first; the build's own row still comes last.
func TestExportSpoolsLogsPageByPage(t *testing.T) {
	b := build.Build{ID: "big", ProjectID: "p", Status: build.Succeeded, CreatedAt: time.Now()}
	src := &pagedSource{fakeSource: fakeSource{builds: map[string]build.Build{b.ID: b}}, n: 2*logPage + 10}
	e := newExporter(t, t.TempDir(), "http://127.0.0.1:1/", src)
	defer e.Close()
	src.spool = e.spool
	if err := e.export(context.Background(), b.ID); err != nil {
		t.Fatal(err)
	}
	// Before each page after the first, the previous ones are spooled
	// (with the 2 steps' rows).
	if fmt.Sprint(src.pending) != fmt.Sprint([]int{2, 2 + logPage, 2 + 2*logPage}) {
		t.Fatalf("rows spooled as each page was read = %v, want [2 %d %d]", src.pending, 2+logPage, 2+2*logPage)
	}
	var tables []string
	for {
		seg, ok, err := e.spool.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		for _, r := range seg.Records {
			tables = append(tables, r.Table)
		}
		e.spool.Remove(seg.Seq)
	}
	if len(tables) != 2+src.n+1 || tables[len(tables)-1] != TableBuilds || tables[0] != TableSteps {
		t.Fatalf("spooled %d rows, first %s, last %s; want %d, the steps first, the build last", len(tables), tables[0], tables[len(tables)-1], 2+src.n+1)
	}
}
