package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
)

// A full data disk. Every write of the store goes through exec or tx,
// which turn SQLite's SQLITE_FULL ("database or disk is full"), Postgres's
// disk_full (its server's disk) and the file system's ENOSPC into
// errdefs.DiskFull, so callers and users read "kiln's data disk is full
// (N bytes free)" rather than an internal error.
//
// SQLite itself recovers at once when room returns: a statement that
// failed with SQLITE_FULL is rolled back, the connection stays usable and
// the next write succeeds (TestDiskFullRecovers). Builds that failed for
// about a minute after a disk filled did so because the disk was still
// full: BuildKit released the failed step's snapshot only later.
//
// Two writes must not be lost to a full disk. The first is a build's end. Its client
// (or the reaper, or a lost builder) has ended the build and will not say
// so again; left unwritten, the build would read "running" until the
// health timeout cancels it with an untrue reason. UpdateBuild therefore
// keeps an end it could not write (pendingEnds) and reports success; the
// store's reads show the build ended, and a background loop writes it as
// soon as there is room. Kept ends live in memory only: a crash before
// room returns loses them, and the restart reconciles those builds as it
// does every build the crash interrupted.
//
// The second is a health report: refused, a client that is alive would
// look silent and the reaper would cancel its build after the health
// timeout. UpdateBuild keeps the latest report of each build in memory
// (keepHealth) for reads to show, until the build's next write succeeds.

// maxKeptHealth bounds the health reports kept in memory (one time per
// running build); beyond it, reports fail with the disk-full error.
const maxKeptHealth = 10000

// maxPendingEnds bounds the ends kept in memory (each is a status, a time
// and an error message of at most 64 KiB); beyond it, ending a build on a
// full disk fails with the disk-full error.
const maxPendingEnds = 1000

// pendingEnds are build ends written when the disk has room again. The
// flush loop is started by the first end kept and exits when none is
// left (or the store closes).
type pendingEnds struct {
	mu       sync.Mutex
	ends     map[string]build.Build // build id → its ended record (Status, Error, FinishedAt are what is written)
	health   map[string]time.Time   // build id → its latest health report a full disk refused
	flushing bool                   // the flush loop runs
	closed   chan struct{}          // closed by Close: the loop stops
	done     chan struct{}          // closed when a running loop exits; nil if none ran
}

// isDiskFull reports whether err is the file system's, SQLite's or
// Postgres's "no room".
func isDiskFull(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqliteFull {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgDiskFull {
		return true
	}
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// sqliteFull is SQLITE_FULL, the primary result code of "database or disk
// is full".
const sqliteFull = 13

// diskErr turns a write's "no room" into errdefs.DiskFull, saying how much
// the data disk has left (unknown for a database on another machine);
// other errors pass unchanged.
func (s *SQL) diskErr(err error) error {
	if err == nil || !isDiskFull(err) || errdefs.IsDiskFull(err) {
		return err
	}
	free := int64(-1)
	if s.dir != "" {
		free = FreeBytes(s.dir)
	}
	return errdefs.DiskFull(free)
}

// FreeBytes is what the file system holding dir has left for kiln (blocks
// available to unprivileged users), or -1 if it cannot be read.
func FreeBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// exec runs one write statement outside a transaction.
func (s *SQL) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := s.db.ExecContext(ctx, query, args...)
	return res, s.diskErr(err)
}

// PendingEnds counts the build ends kept in memory until the data disk has
// room to write them (readiness reports them).
func (s *SQL) PendingEnds() int {
	s.pending.mu.Lock()
	defer s.pending.mu.Unlock()
	return len(s.pending.ends)
}

// keepEnd keeps b's end to write later; false if too many are kept.
func (s *SQL) keepEnd(b build.Build) bool {
	p := &s.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.ends[b.ID]; !ok && len(p.ends) >= maxPendingEnds {
		return false
	}
	select {
	case <-p.closed:
		return false
	default:
	}
	if p.ends == nil {
		p.ends = map[string]build.Build{}
	}
	p.ends[b.ID] = build.Build{ID: b.ID, Status: b.Status, Error: b.Error, FinishedAt: b.FinishedAt}
	delete(p.health, b.ID) // an ended build's health no longer counts
	if !p.flushing {
		p.flushing = true
		p.done = make(chan struct{})
		go s.flushEnds(p.done)
	}
	return true
}

// keepHealth keeps a health report until the build's next write; false
// if too many are kept.
func (s *SQL) keepHealth(id string, at time.Time) bool {
	p := &s.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.health[id]; !ok && len(p.health) >= maxKeptHealth {
		return false
	}
	if p.health == nil {
		p.health = map[string]time.Time{}
	}
	p.health[id] = at
	return true
}

// overlay applies what a full disk kept to b, as read from the database:
// its end, if it has not ended there, and its latest health report.
func (s *SQL) overlay(b *build.Build) {
	s.pending.mu.Lock()
	end, ended := s.pending.ends[b.ID]
	at, reported := s.pending.health[b.ID]
	s.pending.mu.Unlock()
	if ended && !b.Terminal() {
		b.Status, b.Error, b.FinishedAt = end.Status, end.Error, end.FinishedAt
	}
	if reported && at.After(b.LastHealthAt) {
		b.LastHealthAt = at
	}
}

// forget drops what was kept of build id once a write of it succeeded
// (the write included it: UpdateBuild overlays before it writes).
func (s *SQL) forget(id string) {
	s.pending.mu.Lock()
	delete(s.pending.ends, id)
	delete(s.pending.health, id)
	s.pending.mu.Unlock()
}

// flushPolicy retries writing kept ends while the disk stays full: every
// second at most, for as long as it takes (until the store closes).
var flushPolicy = retry.Policy{Attempts: -1, Delay: 250 * time.Millisecond, MaxDelay: time.Second,
	// A remote database may fill up and then restart: unreachable for a
	// while is no reason to drop the end either.
	Retryable: func(err error) bool { return errdefs.IsDiskFull(err) || errdefs.IsUnavailable(err) }}

// flushEnds writes kept ends until none is left or the store closes. It
// is the one loop that does; done is closed when it returns.
func (s *SQL) flushEnds(done chan struct{}) {
	defer close(done)
	p := &s.pending
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.closed:
			cancel()
		case <-done:
		}
	}()
	for {
		p.mu.Lock()
		var id string
		for k := range p.ends {
			id = k
			break
		}
		if id == "" {
			p.flushing = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		err := retry.Do(ctx, flushPolicy, func(ctx context.Context) error { return s.writeEnd(ctx, id) })
		if ctx.Err() != nil {
			p.mu.Lock()
			p.flushing = false
			p.mu.Unlock()
			return
		}
		if err != nil {
			// Not a full disk (the row is gone, the database is broken):
			// trying again would not help. The end stays visible to
			// reads until the process exits.
			p.mu.Lock()
			delete(p.ends, id)
			p.mu.Unlock()
		}
	}
}

// writeEnd writes the kept end of build id, unless the build ended
// meanwhile (the first end wins), and forgets it once written.
func (s *SQL) writeEnd(ctx context.Context, id string) error {
	s.pending.mu.Lock()
	end, ok := s.pending.ends[id]
	s.pending.mu.Unlock()
	if !ok {
		return nil
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var status build.Status
		if err := tx.QueryRowContext(ctx, `SELECT status FROM builds WHERE id = ?`+s.d.forUpdate, id).Scan(&status); err != nil {
			return notFound(err, "build", id)
		}
		if status.Terminal() {
			return nil
		}
		_, err := tx.ExecContext(ctx, `UPDATE builds SET status = ?, error = ?, finished_at = ? WHERE id = ?`, end.Status, end.Error, ms(end.FinishedAt), id)
		return err
	})
	if err == nil || !errdefs.IsDiskFull(err) {
		s.pending.mu.Lock()
		if now, ok := s.pending.ends[id]; ok && now.Status == end.Status && now.Error == end.Error && now.FinishedAt.Equal(end.FinishedAt) {
			delete(s.pending.ends, id)
		}
		s.pending.mu.Unlock()
	}
	return err
}

// closePending stops the flush loop, then tries once more to write what
// is kept (Close calls it before closing the database; a second call does
// nothing).
func (s *SQL) closePending() {
	p := &s.pending
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		return
	default:
	}
	close(p.closed) // under mu: keepEnd starts no loop after this
	done := p.done
	ids := make([]string, 0, len(p.ends))
	for id := range p.ends {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	if done != nil {
		<-done
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, id := range ids {
		s.writeEnd(ctx, id)
	}
}
