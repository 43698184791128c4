package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/redact"
)

// Open opens the store a location names, as `kiln serve --store` and
// `kiln store migrate` take it:
//
//	""                        the SQLite database in dataDir (kiln.db)
//	sqlite:PATH               a SQLite database file, or a data directory holding kiln.db
//	postgres://… postgresql://…  a Postgres database (OpenPostgres)
func Open(ctx context.Context, location, dataDir string, opts ...Option) (*SQL, error) {
	if path, ok := SQLitePath(location, dataDir); ok {
		return OpenSQLite(ctx, path, opts...)
	}
	if IsPostgres(location) {
		return OpenPostgres(ctx, location, opts...)
	}
	return nil, fmt.Errorf("store %q: want sqlite:PATH or postgres://…: %w", redact.URL(location), errdefs.ErrInvalid)
}

// SQLitePath is the database file location names, if it names a SQLite
// one ("" or sqlite:…; see Open).
func SQLitePath(location, dataDir string) (string, bool) {
	if location != "" && !strings.HasPrefix(location, "sqlite:") {
		return "", false
	}
	path := strings.TrimPrefix(strings.TrimPrefix(location, "sqlite:"), "//")
	if path == "" {
		return filepath.Join(dataDir, "kiln.db"), true
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, "kiln.db")
	}
	return path, true
}

// IsPostgres reports whether location names a Postgres database.
func IsPostgres(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}
