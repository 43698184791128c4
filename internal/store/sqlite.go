package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"modernc.org/sqlite"
)

// OpenSQLite opens (creating if needed) the SQLite database at path and
// runs any pending migrations once. The database and its -wal and -shm
// files are the owner's only (0600): they hold token hashes and sealed
// secrets.
func OpenSQLite(ctx context.Context, path string, opts ...Option) (*SQLite, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := ownerOnly(path); err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db := openDB(dsnConnector{dsn: dsn, drv: &sqlite.Driver{}}, false, o)
	// SQLite has one writer; one connection serialises transactions instead
	// of failing them with SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	if err := migrate(ctx, db, sqliteDialect); err != nil {
		db.Close()
		return nil, err
	}
	return newSQL(db, sqliteDialect, filepath.Dir(path)), nil
}

// ownerOnly creates the database file 0600 if it is missing (SQLite
// creates its -wal and -shm files with the database file's mode) and
// makes existing ones, from a kiln that left them 0644, 0600.
func ownerOnly(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
