package store

import (
	"context"
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
		return nil, fmt.Errorf("postgres store %s: %w", Redact(url), err)
	}
	if err := migrate(ctx, db, postgresDialect); err != nil {
		db.Close()
		return nil, err
	}
	return newSQL(db, postgresDialect, ""), nil
}

// maxPostgresConns bounds one kiln's connections to Postgres (each is a
// server process there); transactions beyond it wait for one.
const maxPostgresConns = 16
