package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/redact"
	"github.com/kiln-dev/kiln/internal/store"
)

// newStoreCmd is `kiln store`: operations on the control plane's database.
func newStoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Operate on the control plane's database (move it from SQLite to Postgres)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newStoreMigrateCmd())
	return cmd
}

// newStoreMigrateCmd is `kiln store migrate`: store.Copy between two
// locations.
func newStoreMigrateCmd() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "migrate --from sqlite:DATA --to postgres://…",
		Short: "Copy a kiln install's database into a new, empty one (SQLite to Postgres)",
		Long: `Copy every table of the control plane's database (organizations, projects, tokens,
builds with their steps and logs, trust policies, logins, the audit log, shares,
usage, resource samples, uploaded contexts and the registry's index) into a new,
empty database, in one transaction: the target is left untouched unless all of it
was copied and every table's row count matches the source's.

Stop kiln serve first (a server holding either database makes this refuse):
builds it writes during the copy would not be in the target. Both databases are
migrated to this kiln's schema before the copy, so an older kiln binary cannot
use the source afterwards. The
data directory keeps what is not in the database (the CA and its keys,
secrets.key, blob.key, the registry's and builders' storage): start kiln serve
with the same --data and --store pointing at the target. The source's data is
not changed; keep it until the new install has served.`,
		Example: `  # a kiln in /var/lib/kiln, to Postgres (the password from the environment, not the process list):
  systemctl stop kiln
  export KILN_STORE='postgres://kiln:PASSWORD@db.internal:5432/kiln?sslmode=verify-full'
  kiln store migrate --from sqlite:/var/lib/kiln
  kiln serve --data /var/lib/kiln            # KILN_STORE still set: serves from Postgres

  # a database file elsewhere, the target given on the command line:
  kiln store migrate --from sqlite:/backup/kiln.db --to postgres://kiln@127.0.0.1/kiln`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return fmt.Errorf("--to (or KILN_STORE) names the target database, e.g. postgres://kiln:PASSWORD@HOST/kiln: %w", errdefs.ErrInvalid)
			}
			if from == "" {
				from = "sqlite:" + client.DefaultDataDir()
			}
			if same(from, to) {
				return fmt.Errorf("--from and --to name the same database: %w", errdefs.ErrInvalid)
			}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			src, err := openExisting(cmd, from)
			if err != nil {
				return err
			}
			defer src.Close()
			// Exclusive: a kiln serve started on the target meanwhile is
			// refused, rather than bootstrap into it during the copy.
			dst, err := store.Open(ctx, to, "", store.Exclusive())
			if err != nil {
				return fmt.Errorf("target: %w", err)
			}
			defer dst.Close()
			v, err := src.SchemaVersion(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "copying %s to %s (schema version %d)\n", redact.URL(from), redact.URL(to), v)
			start := time.Now()
			var rows int64
			tables := 0
			err = store.Copy(ctx, dst, src, func(table string, n int64) {
				rows += n
				tables++
				fmt.Fprintf(out, "  %-24s %d %s\n", table, n, plural(n, "row", "rows"))
			})
			if err != nil {
				return fmt.Errorf("nothing was committed to the target: %w", err)
			}
			fmt.Fprintf(out, "copied %d rows of %d tables in %s; every table's count matches\n", rows, tables, time.Since(start).Round(time.Millisecond))
			fmt.Fprintf(out, "next: kiln serve --store (or KILN_STORE) %s, with the same --data\n", redact.URL(to))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the install's database: sqlite:DATA (a data directory holding kiln.db, or the file) (default sqlite:DATA of KILN_DATA or kiln's default data directory)")
	to = os.Getenv("KILN_STORE")
	f.Var(storeLocation{&to}, "to", "the new, empty database: postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=… (env KILN_STORE, which keeps the password out of the process list)")
	return cmd
}

// openExisting opens the source, which must exist: store.Open would
// create an empty SQLite database where a path is mistyped.
func openExisting(cmd *cobra.Command, location string) (*store.SQL, error) {
	if path, ok := store.SQLitePath(location, ""); ok {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("source: no kiln database at %s: %w", path, errdefs.ErrNotFound)
		}
	}
	s, err := store.Open(cmd.Context(), location, "", store.Exclusive()) // no server on it meanwhile
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	return s, nil
}

// same reports whether two locations name one database (as far as can be
// told without connecting).
func same(a, b string) bool {
	if pa, ok := store.SQLitePath(a, ""); ok {
		pb, ok := store.SQLitePath(b, "")
		return ok && filepath.Clean(pa) == filepath.Clean(pb)
	}
	return a == b
}

// plural is one if n is 1, else many.
func plural(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
