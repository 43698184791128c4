package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// copyBatch is how many rows one INSERT of Copy carries (a Postgres
// statement takes at most 65535 parameters; kiln's widest table has 21
// columns).
const copyBatch = 200

// copyFirst are the tables other tables' foreign keys point at: Copy fills
// them first.
var copyFirst = []string{"organizations"}

// Copy copies every row of every table of src into dst, which must be
// empty and at the same schema version (both stores migrate on open, so
// the same kiln opening both makes it so). It reads src in one transaction
// (a consistent snapshot) and writes dst in one, checking before it
// commits that each table holds as many rows as src's; on any error dst is
// left as it was. progress, if not nil, is told of each table once copied.
// kiln's migration table is not copied: each database has its own.
func Copy(ctx context.Context, dst, src *SQL, progress func(table string, rows int64)) error {
	sv, err := src.SchemaVersion(ctx)
	if err != nil {
		return fmt.Errorf("source schema version: %w", err)
	}
	dv, err := dst.SchemaVersion(ctx)
	if err != nil {
		return fmt.Errorf("target schema version: %w", err)
	}
	if sv != dv {
		return fmt.Errorf("source is at schema version %d, target at %d: %w", sv, dv, errdefs.ErrInvalid)
	}
	tables, err := src.tables(ctx)
	if err != nil {
		return fmt.Errorf("source tables: %w", err)
	}
	dtables, err := dst.tables(ctx)
	if err != nil {
		return fmt.Errorf("target tables: %w", err)
	}
	// Every table of the source must be in the target; the target may
	// hold others (an extension's, in Postgres's public schema), which the
	// copy leaves alone.
	for _, t := range tables {
		if !slices.Contains(dtables, t) {
			return fmt.Errorf("the source's table %s is not in the target (source tables %v, target %v): %w", t, tables, dtables, errdefs.ErrInvalid)
		}
	}
	for i, first := range copyFirst {
		if j := slices.Index(tables, first); j >= 0 {
			tables = slices.Insert(slices.Delete(tables, j, j+1), i, first)
		}
	}

	// One snapshot of the source: SQLite's transactions are; Postgres's
	// default (read committed) would let each table see a later state.
	ro := &sql.TxOptions{ReadOnly: true}
	if src.d.goose == postgresDialect.goose {
		ro.Isolation = sql.LevelRepeatableRead
	}
	rtx, err := src.db.BeginTx(ctx, ro)
	if err != nil {
		return err
	}
	defer rtx.Rollback()
	return dst.tx(ctx, func(wtx *sql.Tx) error {
		for _, t := range tables {
			var n int64
			if err := wtx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return fmt.Errorf("the target is not empty (table %s has %d rows): copy only into a new database: %w", t, n, errdefs.ErrAlreadyExists)
			}
		}
		for _, t := range tables {
			n, err := copyTable(ctx, wtx, rtx, t)
			if err != nil {
				return fmt.Errorf("table %s: %w", t, err)
			}
			var want, got int64
			if err := rtx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t).Scan(&want); err != nil {
				return err
			}
			if err := wtx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t).Scan(&got); err != nil {
				return err
			}
			if n != want || got != want {
				return fmt.Errorf("table %s: the source has %d rows, %d were read and the target has %d", t, want, n, got)
			}
			if progress != nil {
				progress(t, got)
			}
		}
		return nil
	})
}

// tables lists the store's tables, sorted, without the migration table.
func (s *SQL) tables(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, s.d.tables)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, err
		}
		if t != "goose_db_version" {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out, rows.Err()
}

// copyTable inserts every row of table as src reads it into dst, in
// batches, and returns how many it read. The columns are src's, by name:
// dst must have each of them.
func copyTable(ctx context.Context, dst, src *sql.Tx, table string) (int64, error) {
	rows, err := src.QueryContext(ctx, `SELECT * FROM `+table)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	row := "(" + placeholders(len(cols)) + ")"
	insert := func(vals []any) error {
		if len(vals) == 0 {
			return nil
		}
		n := len(vals) / len(cols)
		q := `INSERT INTO ` + table + ` (` + strings.Join(cols, ", ") + `) VALUES ` + strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")
		_, err := dst.ExecContext(ctx, q, vals...)
		return err
	}
	var n int64
	batch := make([]any, 0, copyBatch*len(cols))
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return n, err
		}
		batch = append(batch, vals...)
		n++
		if len(batch) == cap(batch) {
			if err := insert(batch); err != nil {
				return n, err
			}
			batch = batch[:0]
		}
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	return n, insert(batch)
}
