package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/redact"
)

// OpenPostgres opens the Postgres database url names
// ("postgres://user:password@host:port/db?sslmode=…", or any form pgx
// accepts) and runs any pending migrations once; several kiln processes
// opening one database migrate it one at a time. The database should sort
// text bytewise (LC_COLLATE "C"), as SQLite does, for listings to come in
// the same order on both. Errors never repeat url: it may hold a password.
func OpenPostgres(ctx context.Context, url string, opts ...Option) (*SQL, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's parse errors quote no part of the URL's password, but say
		// nothing more than that the URL is wrong either way.
		return nil, fmt.Errorf("postgres store: the URL does not parse (want postgres://user:password@host:port/database): %w", errdefs.ErrInvalid)
	}
	db := openDB(stdlib.GetConnector(*cfg), true, o)
	db.SetMaxOpenConns(maxPostgresConns)
	db.SetMaxIdleConns(maxPostgresConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		// The operator reads this: say why (pgx's text names the user and
		// database, never the password), which unreachable's hides.
		var ue unreachableError
		if errors.As(err, &ue) {
			return nil, errdefs.Wrapf(errdefs.ErrUnavailable, ue.cause, "postgres store %s is unreachable", redact.URL(url))
		}
		return nil, fmt.Errorf("postgres store %s: %w", redact.URL(url), err)
	}
	var held *sql.Conn
	if o.exclusive {
		var err error
		if held, err = hold(ctx, db, holdWait); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := migrate(ctx, db, postgresDialect); err != nil {
		if held != nil {
			held.Close()
		}
		db.Close()
		return nil, err
	}
	s := newSQL(db, postgresDialect, "")
	if held != nil {
		s.excl = &exclusive{db: db, conn: held, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
		go s.excl.watch()
	}
	return s, nil
}

// exclusiveLock is the key of the session lock Exclusive takes: "kiln" in
// ASCII.
const exclusiveLock = 0x6b696c6e

// holdWait is how long hold tries for the lock: a server that just
// stopped may still have its session on the Postgres side for a moment.
const holdWait = 10 * time.Second

// hold takes the Exclusive lock on a connection of its own, which holds it
// until closed. The connection's keepalives are short, so that the lock of
// a holder whose machine died goes within a minute rather than the hours
// of the operating system's default.
func hold(ctx context.Context, db *sql.DB, wait time.Duration) (*sql.Conn, error) {
	conn, err := liveConn(ctx, db)
	if err != nil {
		return nil, err
	}
	for _, set := range []string{`SET tcp_keepalives_idle = 30`, `SET tcp_keepalives_interval = 10`, `SET tcp_keepalives_count = 3`} {
		if _, err := conn.ExecContext(ctx, set); err != nil {
			conn.Close()
			return nil, err
		}
	}
	deadline := time.Now().Add(wait)
	for {
		var ok bool
		if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock(?)`, exclusiveLock).Scan(&ok); err != nil {
			conn.Close()
			return nil, err
		}
		if ok {
			return conn, nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			conn.Close()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	holder := "another kiln serve"
	var pid int64
	var from string
	var since time.Time
	if conn.QueryRowContext(ctx, `SELECT a.pid, coalesce(host(a.client_addr), 'a local socket'), a.backend_start
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.objid = ? AND l.granted LIMIT 1`, exclusiveLock).Scan(&pid, &from, &since) == nil {
		holder = fmt.Sprintf("another kiln serve (Postgres backend pid %d, from %s, since %s)", pid, from, since.UTC().Format(time.RFC3339))
	}
	conn.Close()
	return nil, heldElsewhere{errdefs.Wrapf(errdefs.ErrUnavailable, nil, "%s uses this Postgres database; to run several replicas on one database, start each with the same --cluster-key-file (docs/operating.md, Replicas). "+
		"If that server is gone, its session ends within a minute, or end it with SELECT pg_terminate_backend(%d)", holder, pid)}
}

// liveConn is a connection of db's pool that answers: idle ones a
// Postgres restart killed are discarded on the way.
func liveConn(ctx context.Context, db *sql.DB) (*sql.Conn, error) {
	var err error
	for range maxPostgresConns + 1 {
		var conn *sql.Conn
		if conn, err = db.Conn(ctx); err != nil {
			return nil, err
		}
		if err = conn.PingContext(ctx); err == nil {
			return conn, nil
		}
		_ = conn.Raw(func(any) error { return driver.ErrBadConn }) // not back to the pool
		conn.Close()
	}
	return nil, err
}

// heldElsewhere is hold's answer when another server holds the lock.
type heldElsewhere struct{ error }

func (h heldElsewhere) Unwrap() error { return h.error }

// exclusive is a held Exclusive lock, watched: should its connection
// drop (Postgres restarted, the network parted), the lock went with it, and
// watch takes it again on a new connection; if another server took it
// meanwhile, Lost is closed and the server must stop.
type exclusive struct {
	db   *sql.DB
	mu   sync.Mutex
	conn *sql.Conn
	lost chan struct{}
	stop chan struct{}
	done chan struct{}
}

func (e *exclusive) watch() {
	defer close(e.done)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e.mu.Lock()
		err := e.conn.PingContext(ctx)
		e.mu.Unlock()
		if err == nil {
			cancel()
			continue
		}
		conn, herr := hold(ctx, e.db, 0)
		cancel()
		if herr == nil {
			e.mu.Lock()
			e.conn.Close()
			e.conn = conn
			e.mu.Unlock()
			continue
		}
		if errors.As(herr, new(heldElsewhere)) {
			close(e.lost)
			return
		}
		// Postgres unreachable: nobody else can take the lock either; try
		// again at the next tick.
	}
}

// release gives the lock back before closing its connection: closing
// alone leaves it until the Postgres backend has exited, which a server
// started right after would find still held.
func (e *exclusive) release() {
	close(e.stop)
	<-e.done
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = e.conn.ExecContext(ctx, `SELECT pg_advisory_unlock(?)`, exclusiveLock)
	e.conn.Close()
}

// maxPostgresConns bounds one kiln's connections to Postgres (each is a
// server process there); transactions beyond it wait for one.
const maxPostgresConns = 16
