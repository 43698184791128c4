package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// Source is what the exporter reads of a finished build (internal/store
// implements it).
type Source interface {
	GetBuild(ctx context.Context, id string) (build.Build, error)
	ListSteps(ctx context.Context, buildID string) ([]build.Step, error)
	ListBuildLogs(ctx context.Context, buildID string, after int, limit int) ([]build.LogLine, error)
	LastUncachedStepDurations(ctx context.Context, projectID string, names []string, before time.Time) (map[string]time.Duration, error)
}

// Defaults of Config.
const (
	DefaultRetention = 90 * 24 * time.Hour
	DefaultMaxBytes  = 512 << 20
)

// Config configures an Exporter; zero values take the defaults noted.
type Config struct {
	// URL is ClickHouse's HTTP interface, "http://HOST:8123/?database=kiln".
	URL string
	// Retention: partitions (months of builds) older than this are dropped;
	// 0 → 90 days.
	Retention time.Duration
	// Dir holds the spool and the queue of builds to export (in kiln's data
	// directory).
	Dir string
	// MaxBytes bounds the spool on disk; 0 → 512 MiB.
	MaxBytes int64
	// Settle is how long after a build ended its rows are read: steps and
	// logs still drain from its builder for a while (follow.Config.Grace,
	// 10 s). 0 → 15 s.
	Settle time.Duration
	// Flush is the longest rows wait in the spool before they are sent
	// (a batch is what accumulated meanwhile); 0 → 1 s.
	Flush time.Duration
	// Timeout bounds each request to ClickHouse; 0 → 30 s.
	Timeout time.Duration
	// MaxDelay caps the backoff between tries while ClickHouse is down;
	// 0 → 10 s.
	MaxDelay time.Duration
	// Source is the store builds are read from once they settled
	// (required: New refuses a Config without one). It is called from the
	// exporter's worker goroutine only, never on a build's path.
	Source Source
	// Logger receives what the export has to say (ClickHouse down and
	// back, rows dropped or refused); the exporter adds the ClickHouse
	// host and database to each record, never a password. nil → discard.
	Logger *slog.Logger
}

// Exporter exports finished builds to ClickHouse (see the package doc). It
// is a build.Observer; Start runs its worker, sender and retention loop,
// Close stops them.
type Exporter struct {
	cfg   Config
	ch    *ClickHouse
	spool *Spool
	log   *slog.Logger

	// ended receives the ids of builds that ended (BuildEnded); the worker
	// owns the other end. Full: the id is dropped and counted (lost).
	ended chan string
	lost  atomic.Uint64
	// wake tells the sender rows were spooled (cap 1, never blocks).
	wake chan struct{}

	// journal is the worker's record of builds waiting to be exported, so
	// that a restart exports what the previous run only queued; the worker
	// owns it (and journalLines, the lines it holds). Past journalMax lines
	// (and twice the queue) it is rewritten from the queue.
	journal      *os.File
	journalLines int
	journalMax   int

	exported atomic.Uint64 // segments ClickHouse acknowledged

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ build.Observer = (*Exporter)(nil)

// New opens the spool in cfg.Dir and checks the URL; nothing talks to
// ClickHouse until Start.
func New(cfg Config) (*Exporter, error) {
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 15 * time.Second
	}
	if cfg.Flush <= 0 {
		cfg.Flush = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Source == nil {
		return nil, fmt.Errorf("telemetry: no source of builds: %w", errdefs.ErrInvalid)
	}
	ch, err := NewClickHouse(cfg.URL, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	spool, err := OpenSpool(SpoolConfig{Dir: filepath.Join(cfg.Dir, "spool"), MaxBytes: cfg.MaxBytes})
	if err != nil {
		return nil, err
	}
	e := &Exporter{cfg: cfg, ch: ch, spool: spool, log: cfg.Logger.With("clickhouse", ch.base.Host, "database", ch.database),
		ended: make(chan string, 4096), wake: make(chan struct{}, 1), journalMax: 10000}
	if n := spool.RejectedDeleted(); n > 0 {
		e.log.Warn("telemetry: spool past its bound: the oldest segments ClickHouse refused, set aside, deleted", "segments", n)
	}
	return e, nil
}

// BuildCreated is not exported: only finished builds are.
func (e *Exporter) BuildCreated(build.Build) {}

// BuildStarted is not exported either.
func (e *Exporter) BuildStarted(build.Build) {}

// BuildEnded queues the build for export and returns at once: on the
// build's path, it never waits for the disk or ClickHouse. A build that
// ends again (a presumed failure overturned) is exported again; the newer
// rows replace the older.
func (e *Exporter) BuildEnded(b build.Build) {
	select {
	case e.ended <- b.ID:
	default:
		e.lost.Add(1)
	}
}

// Dropped is how many rows the export dropped since kiln started: the
// spool was full, or ClickHouse refused them for good. Metrics export it
// (a counter); a nil Exporter (no export) dropped none.
func (e *Exporter) Dropped() uint64 {
	if e == nil {
		return 0
	}
	return e.spool.Dropped()
}

// Lost is how many finished builds were not queued for export because
// the queue was full (thousands of builds ending within the settle time).
func (e *Exporter) Lost() uint64 {
	if e == nil {
		return 0
	}
	return e.lost.Load()
}

// Pending is how many rows wait in the spool for ClickHouse (a gauge).
func (e *Exporter) Pending() int {
	if e == nil {
		return 0
	}
	n, _ := e.spool.Pending()
	return n
}

// pendingEntry is one line of the journal: a build to export at Due
// (Unix ms), or Done, a build exported (to the spool).
type pendingEntry struct {
	ID   string `json:"id,omitempty"`
	Due  int64  `json:"due,omitempty"`
	Done string `json:"done,omitempty"`
}

type pending struct {
	id  string
	due time.Time
}

func (e *Exporter) journalPath() string { return filepath.Join(e.cfg.Dir, "pending.jsonl") }

// loadJournal reads the builds a previous run queued and did not export,
// and starts the journal afresh with them.
func (e *Exporter) loadJournal() ([]pending, error) {
	path := e.journalPath()
	var queue []pending
	if data, err := os.ReadFile(path); err == nil {
		done := map[string]bool{}
		var all []pending
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			var p pendingEntry
			if json.Unmarshal(sc.Bytes(), &p) != nil {
				continue // a torn last line
			}
			if p.Done != "" {
				done[p.Done] = true
			} else if p.ID != "" {
				all = append(all, pending{id: p.ID, due: time.UnixMilli(p.Due)})
			}
		}
		for _, p := range all {
			if !done[p.id] {
				queue = append(queue, p)
				done[p.id] = true // once
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	if err := e.rewriteJournal(queue); err != nil {
		return nil, err
	}
	return queue, nil
}

// rewriteJournal replaces the journal with one line per build of queue
// (written aside, fsynced, renamed over it: a crash leaves the old one or
// the new one) and keeps it open for appending.
func (e *Exporter) rewriteJournal(queue []pending) error {
	path := e.journalPath()
	tmp := path + ".tmp"
	var buf bytes.Buffer
	for _, p := range queue {
		line, _ := json.Marshal(pendingEntry{ID: p.id, Due: p.due.UnixMilli()})
		buf.Write(append(line, '\n'))
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("telemetry: %w", err)
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	if e.journal != nil {
		e.journal.Close()
	}
	e.journal, e.journalLines = f, len(queue)
	return nil
}

// compactJournal rewrites the journal from the queue once it holds more
// than journalMax lines and twice the queue's: under steady load the
// queue is never empty, and the journal must not grow with every build.
func (e *Exporter) compactJournal(queue []pending) {
	if e.journalLines <= e.journalMax || e.journalLines <= 2*len(queue) {
		return
	}
	if err := e.rewriteJournal(queue); err != nil {
		// The old journal stays open and right, only long: try again later.
		e.log.Warn("telemetry: compact export queue", "err", err)
	}
}

func (e *Exporter) note(p pendingEntry) {
	e.journalLines++
	line, _ := json.Marshal(p)
	if _, err := e.journal.Write(append(line, '\n')); err != nil {
		e.log.Warn("telemetry: write export queue", "err", err)
		return
	}
	if err := e.journal.Sync(); err != nil {
		e.log.Warn("telemetry: write export queue", "err", err)
	}
}

// Start runs the worker, the sender and the retention loop until Close.
// Builds a previous run queued, and rows it spooled, are exported first.
func (e *Exporter) Start() error {
	queue, err := e.loadJournal()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(2)
	go func() { defer e.wg.Done(); e.work(ctx, queue) }()
	go func() { defer e.wg.Done(); e.send(ctx) }()
	rows, _ := e.spool.Pending()
	e.log.Info("exporting builds to ClickHouse", "queued_builds", len(queue), "spooled_rows", rows, "retention", e.cfg.Retention)
	return nil
}

// Close stops the loops. Builds still queued are kept in the journal and
// rows in the spool: the next Start exports them.
func (e *Exporter) Close() {
	if e.cancel != nil {
		e.cancel()
		e.wg.Wait()
	}
	// Builds that ended as the server stopped (build.Service.Stopped).
drain:
	for {
		select {
		case id := <-e.ended:
			if e.journal != nil {
				e.note(pendingEntry{ID: id, Due: time.Now().Add(e.cfg.Settle).UnixMilli()})
			}
		default:
			break drain
		}
	}
	if e.journal != nil {
		e.journal.Close()
	}
	if err := e.spool.Close(); err != nil {
		e.log.Warn("telemetry: close spool", "err", err)
	}
}

// work owns the queue of ended builds: each is read from the store Settle
// after it ended and its rows spooled.
func (e *Exporter) work(ctx context.Context, queue []pending) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := time.Hour
		if len(queue) > 0 {
			wait = max(time.Until(queue[0].due), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case id := <-e.ended:
			p := pending{id: id, due: time.Now().Add(e.cfg.Settle)}
			e.note(pendingEntry{ID: p.id, Due: p.due.UnixMilli()})
			queue = append(queue, p)
		case <-timer.C:
			if len(queue) == 0 {
				continue
			}
			p := queue[0]
			queue = queue[1:]
			if err := e.export(ctx, p.id); err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, errdefs.ErrNotFound) {
					e.log.Warn("telemetry: build to export is gone", "build_id", p.id)
				} else {
					// The store failed (disk full?): try again later, behind the others.
					e.log.Warn("telemetry: export build", "build_id", p.id, "err", err)
					queue = append(queue, pending{id: p.id, due: time.Now().Add(e.cfg.Settle)})
					continue
				}
			}
			e.note(pendingEntry{Done: p.id})
			e.compactJournal(queue)
			select {
			case e.wake <- struct{}{}:
			default:
			}
		}
	}
}

// logPage is how many log lines export reads (and spools) at a time.
const logPage = 5000

// export reads one build, its steps and its logs, and spools their rows:
// the steps', each page of log lines as it is read (a build's logs are
// never all in memory), the build's last. A store error part way leaves
// some rows spooled; the retry spools them again, and the newer version
// replaces them in ClickHouse.
func (e *Exporter) export(ctx context.Context, id string) error {
	src := e.cfg.Source
	b, err := src.GetBuild(ctx, id)
	if err != nil {
		return err
	}
	steps, err := src.ListSteps(ctx, id)
	if err != nil {
		return err
	}
	var names []string
	for _, s := range steps {
		if s.Cached {
			names = append(names, s.Name)
		}
	}
	lastUncached := map[string]time.Duration{}
	if len(names) > 0 {
		if lastUncached, err = src.LastUncachedStepDurations(ctx, b.ProjectID, names, b.CreatedAt); err != nil {
			return err
		}
	}
	x := newExportRows(b, steps, lastUncached, time.Now().UnixNano())
	e.spoolRows(id, x.stepRecords())
	for after := 0; ; {
		page, err := src.ListBuildLogs(ctx, id, after, logPage)
		if err != nil {
			return err
		}
		e.spoolRows(id, x.logRecords(page))
		if len(page) < logPage {
			break
		}
		after = page[len(page)-1].Seq
	}
	e.spoolRows(id, []Record{x.buildRecord()})
	return nil
}

// spoolRows appends recs to the spool. Rows it drops (the spool is full)
// are counted and logged, not retried.
func (e *Exporter) spoolRows(id string, recs []Record) {
	before, rejectedBefore := e.spool.Dropped(), e.spool.RejectedDeleted()
	err := e.spool.Append(recs)
	if n := e.spool.RejectedDeleted() - rejectedBefore; n > 0 {
		e.log.Warn("telemetry: spool full: the oldest segments ClickHouse refused, set aside, deleted to make room", "segments", n)
	}
	if err != nil {
		e.log.Warn("telemetry: spool build rows", "build_id", id, "err", err)
	} else if n := e.spool.Dropped() - before; n > 0 {
		e.log.Warn("telemetry: spool full while ClickHouse does not take rows: the oldest dropped", "rows", n, "dropped_total", e.spool.Dropped())
	}
}

// rejectAfter is how many times a segment may be refused by ClickHouse
// (an answer, not a missing one) before it is set aside.
const rejectAfter = 5

// send delivers spooled segments, oldest first, until ctx ends.
func (e *Exporter) send(ctx context.Context) {
	schemaReady := false
	retention := make(chan struct{}, 1)
	retention <- struct{}{} // once at start, then hourly
	go ticker.Run(ctx.Done(), time.Hour, func(time.Time, time.Duration) {
		select {
		case retention <- struct{}{}:
		default:
		}
	})
	down := false
	for ctx.Err() == nil {
		if !schemaReady {
			err := retry.Do(ctx, e.policy(), func(ctx context.Context) error {
				err := e.ch.EnsureSchema(ctx)
				e.noteDown(ctx, &down, err)
				return err
			})
			if err != nil {
				if ctx.Err() == nil {
					e.log.Error("telemetry: ClickHouse refuses kiln's schema; rows stay in the spool", "err", err)
					sleep(ctx, e.cfg.MaxDelay)
				}
				continue
			}
			schemaReady = true
		}
		select {
		case <-retention:
			if dropped, err := e.ch.DropExpired(ctx, time.Now(), e.cfg.Retention); err != nil {
				e.log.Warn("telemetry: retention", "err", err)
			} else if len(dropped) > 0 {
				e.log.Info("telemetry: dropped partitions past the retention", "partitions", dropped)
			}
		default:
		}
		seg, ok, err := e.spool.Oldest()
		if err != nil {
			e.log.Error("telemetry: read spool", "err", err)
			sleep(ctx, e.cfg.MaxDelay)
			continue
		}
		if !ok {
			select {
			case <-ctx.Done():
			case <-e.wake:
				sleep(ctx, e.cfg.Flush) // let a batch gather
			case <-time.After(e.cfg.Flush):
			case <-retention:
				retention <- struct{}{}
			}
			continue
		}
		// A refusal (ClickHouse answered with an error that is not "later")
		// is tried again a few times, then the segment is set aside.
		refused := 0
		p := e.policy()
		p.Retryable = func(err error) bool { return retryable(err) || refused < rejectAfter }
		err = retry.Do(ctx, p, func(ctx context.Context) error {
			err := e.deliver(ctx, seg)
			e.noteDown(ctx, &down, err)
			if missingSchema(err) {
				// The server was replaced or wiped: recreate the schema.
				if serr := e.ch.EnsureSchema(ctx); serr != nil {
					return serr
				}
			} else if err != nil && !retryable(err) {
				refused++
			}
			return err
		})
		switch {
		case err == nil:
			if err := e.spool.Remove(seg.Seq); err != nil {
				e.log.Warn("telemetry: remove delivered segment", "err", err)
			}
			e.exported.Add(1)
		case ctx.Err() != nil:
			e.spool.Release(seg.Seq)
		default:
			e.log.Error("telemetry: ClickHouse refuses a segment of rows; set aside, its rows dropped", "segment", seg.Seq, "rows", len(seg.Records), "err", err)
			if err := e.spool.SetAside(seg.Seq); err != nil {
				e.log.Warn("telemetry: set aside segment", "err", err)
			}
		}
	}
}

// noteDown logs when ClickHouse stops and starts answering, once each.
func (e *Exporter) noteDown(ctx context.Context, down *bool, err error) {
	switch {
	case ctx.Err() != nil:
	case err != nil && !*down && retryable(err):
		*down = true
		rows, _ := e.spool.Pending()
		e.log.Warn("telemetry: ClickHouse unavailable; rows wait in the spool", "spooled_rows", rows, "err", err)
	case err == nil && *down:
		*down = false
		e.log.Info("telemetry: ClickHouse answers again")
	}
}

func (e *Exporter) policy() retry.Policy {
	return retry.Policy{Attempts: -1, Delay: 250 * time.Millisecond, MaxDelay: e.cfg.MaxDelay, Retryable: retryable}
}

// deliver inserts a segment's rows, one INSERT per table. Steps and logs
// go before builds, so a build row seen means its steps are there.
func (e *Exporter) deliver(ctx context.Context, seg Segment) error {
	byTable := map[string]*bytes.Buffer{}
	for _, r := range seg.Records {
		buf := byTable[r.Table]
		if buf == nil {
			buf = &bytes.Buffer{}
			byTable[r.Table] = buf
		}
		buf.Write(r.Row)
		buf.WriteByte('\n')
	}
	for _, t := range []string{TableSteps, TableStepLogs, TableBuilds} {
		if buf := byTable[t]; buf != nil {
			if err := e.ch.Insert(ctx, t, buf.Bytes()); err != nil {
				return fmt.Errorf("insert into %s: %w", t, err)
			}
			delete(byTable, t)
		}
	}
	for t := range byTable {
		// A table this kiln does not know (spooled by another version).
		e.log.Warn("telemetry: spooled rows for an unknown table skipped", "table", t)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
