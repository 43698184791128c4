package main

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/redact"
	"github.com/kiln-dev/kiln/internal/store"
)

// storeServeExample shows the store flag in `kiln serve --help`.
const storeServeExample = `
  # the control plane's state in Postgres instead of DATA/kiln.db (docs/operating.md "Postgres"):
  KILN_STORE='postgres://kiln:PASSWORD@db.internal:5432/kiln?sslmode=verify-full' kiln serve`

// registerStoreFlags adds `kiln serve --store`.
func registerStoreFlags(f *pflag.FlagSet, location *string) {
	*location = os.Getenv("KILN_STORE")
	f.Var(storeLocation{location}, "store",
		"where the control plane's state lives: sqlite:PATH (a database file, or a data directory holding kiln.db) or postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=…; the password is never logged, so prefer KILN_STORE to the flag, which other users may see in the process list (env KILN_STORE; default: sqlite:DATA/kiln.db)")
}

// storeLocation is a store location flag whose value, as --help and
// errors show it, has its password masked.
type storeLocation struct{ p *string }

func (s storeLocation) String() string {
	if s.p == nil {
		return ""
	}
	return redact.URL(*s.p)
}

func (s storeLocation) Set(v string) error { *s.p = v; return nil }
func (s storeLocation) Type() string       { return "location" }

// describeStore is the store kiln serve opens, to log: a SQLite file's
// path, or the Postgres URL without its password.
func describeStore(location, dataDir string) string {
	if path, ok := store.SQLitePath(location, dataDir); ok {
		return "sqlite:" + path
	}
	return redact.URL(location)
}
