package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/kiln-dev/kiln/internal/errdefs"
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
			return nil, errdefs.Wrapf(errdefs.ErrUnavailable, ue.cause, "postgres store %s is unreachable", Redact(url))
		}
		return nil, fmt.Errorf("postgres store %s: %w", Redact(url), err)
	}
	var held *sql.Conn
	if o.exclusive {
		var err error
		if held, err = hold(ctx, db); err != nil {
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
	s.held = held
	return s, nil
}

// exclusiveLock is the key of the session lock Exclusive takes: "kiln" in
// ASCII.
const exclusiveLock = 0x6b696c6e

// hold takes the Exclusive lock on a connection of its own, which holds it
// until closed.
func hold(ctx context.Context, db *sql.DB) (*sql.Conn, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock(?)`, exclusiveLock).Scan(&ok); err != nil {
		conn.Close()
		return nil, err
	}
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("another kiln serve uses this Postgres database; several replicas on one database are not supported yet (docs/operating.md, Postgres): %w", errdefs.ErrUnavailable)
	}
	return conn, nil
}

// maxPostgresConns bounds one kiln's connections to Postgres (each is a
// server process there); transactions beyond it wait for one.
const maxPostgresConns = 16
