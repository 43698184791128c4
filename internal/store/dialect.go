package store

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"modernc.org/sqlite"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// dialect is what the store's databases spell differently. Everything else
// (the schema, the migrations, every query) is shared: queries are written
// with "?" placeholders, which Postgres connections rewrite (rebindConn).
type dialect struct {
	goose goose.Dialect
	// locker, if set, serialises migrations between processes (replicas
	// starting together).
	locker func() (lock.SessionLocker, error)
	// forUpdate ends a SELECT of a row a transaction writes back, so two
	// writers take turns rather than overwrite each other. SQLite needs
	// none: its one connection runs one transaction at a time.
	forUpdate string
	// forShare ends a SELECT of rows that must not be deleted until the
	// transaction ends (the trust policies a token is minted under).
	forShare string
	// instr is the function giving a substring's position (1-based, 0 when
	// absent): instr(haystack, needle).
	instr string
	// xactLock, if set, is a statement taking a lock on its one argument
	// (a string) until the transaction ends: what serialises writers that
	// number rows (the next log line's seq) where no row can be locked.
	xactLock string
	// tables lists the names of the database's tables (Copy).
	tables string
	// sessionLock and sessionUnlock, if set, take (without waiting) and
	// give back a lock on their one argument (a string) held by the
	// connection, answering a boolean: what TryLock shares between
	// replicas. Without them TryLock's locks are the process's.
	sessionLock, sessionUnlock string
	// nowMs is the database's clock in unix milliseconds: what replicas'
	// heartbeats are stamped and judged with, so that their own clocks
	// never need agree.
	nowMs string
}

var sqliteDialect = dialect{
	goose:  goose.DialectSQLite3,
	instr:  "instr",
	tables: `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`,
	nowMs:  `CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`,
}

var postgresDialect = dialect{
	goose:     goose.DialectPostgres,
	locker:    func() (lock.SessionLocker, error) { return lock.NewPostgresSessionLocker() },
	forUpdate: " FOR UPDATE",
	forShare:  " FOR SHARE",
	instr:     "strpos",
	xactLock:  "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
	tables:    `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`,
	// Keys are offset from the Exclusive lock's key space by hashing
	// with a seed of their own.
	sessionLock:   "SELECT pg_try_advisory_lock(hashtextextended(?, 1))",
	sessionUnlock: "SELECT pg_advisory_unlock(hashtextextended(?, 1))",
	nowMs:         "CAST(extract(epoch from clock_timestamp()) * 1000 AS BIGINT)",
}

// isUniqueViolation reports whether err is a unique (or primary key)
// constraint's refusal, on either database.
func isUniqueViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqliteConstraintUnique || se.Code() == sqliteConstraintPrimaryKey
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == pgUniqueViolation
}

const (
	sqliteConstraintPrimaryKey = 1555 // SQLITE_CONSTRAINT_PRIMARYKEY
	sqliteConstraintUnique     = 2067 // SQLITE_CONSTRAINT_UNIQUE
	pgUniqueViolation          = "23505"
	pgDiskFull                 = "53100"
)

// rebindConn is a Postgres connection that takes the store's queries as
// they are written for SQLite: each "?" becomes "$n", cast to the type of
// its argument (Postgres cannot infer one for a bare parameter in a SELECT
// list, as in INSERT … SELECT ?, ? WHERE …), and a bool argument becomes
// 0 or 1, as the schema stores flags in INTEGER columns. Every other call
// goes to the driver's connection.
type rebindConn struct {
	driver.Conn
}

var (
	_ driver.ConnBeginTx        = (*rebindConn)(nil)
	_ driver.ConnPrepareContext = (*rebindConn)(nil)
	_ driver.ExecerContext      = (*rebindConn)(nil)
	_ driver.QueryerContext     = (*rebindConn)(nil)
	_ driver.Pinger             = (*rebindConn)(nil)
	_ driver.SessionResetter    = (*rebindConn)(nil)
	_ driver.Validator          = (*rebindConn)(nil)
)

func (c *rebindConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	tx, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	return tx, unreachable(err)
}

func (c *rebindConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	q, err := rebind(query, nil)
	if err != nil {
		return nil, err
	}
	st, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, q)
	return st, unreachable(err)
}

func (c *rebindConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	q, err := rebind(query, args)
	if err != nil {
		return nil, err
	}
	res, err := c.Conn.(driver.ExecerContext).ExecContext(ctx, q, args)
	return res, unreachable(err)
}

func (c *rebindConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, err := rebind(query, args)
	if err != nil {
		return nil, err
	}
	rows, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, q, args)
	return rows, unreachable(err)
}

func (c *rebindConn) Ping(ctx context.Context) error {
	return unreachable(c.Conn.(driver.Pinger).Ping(ctx))
}

func (c *rebindConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *rebindConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// pgText is s as Postgres's text can hold it: valid UTF-8 without NUL
// bytes, U+FFFD in place of each NUL and of each run of invalid bytes.
// Build logs carry whatever a RUN step printed; SQLite stores it as is,
// Postgres would refuse the whole batch.
func pgText(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// rebind rewrites query's "?" placeholders (outside quoted strings and
// identifiers) to "$1", "$2", …, each cast to its argument's type when
// args are given (a prepared statement's are not yet: its placeholders
// must be where Postgres infers their type, as in INSERT … VALUES). It
// turns bool arguments into 0 or 1, and strings into pgText, in place.
func rebind(query string, args []driver.NamedValue) (string, error) {
	if args != nil && len(args) == 0 {
		return query, nil // no parameters (goose's migrations: their comments may hold anything)
	}
	var b strings.Builder
	b.Grow(len(query) + 8*len(args))
	n := 0
	var quote byte // the quote we are inside, or 0
	for i := 0; i < len(query); i++ {
		ch := query[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0 // a doubled quote closes and reopens: same result
			}
		case ch == '\'' || ch == '"':
			quote = ch
		case ch == '-' && strings.HasPrefix(query[i:], "--"):
			end := strings.IndexByte(query[i:], '\n')
			if end < 0 {
				end = len(query) - i
			}
			b.WriteString(query[i : i+end])
			i += end - 1
			continue
		case ch == '/' && strings.HasPrefix(query[i:], "/*"):
			end := strings.Index(query[i+2:], "*/")
			if end < 0 {
				end = len(query) - i - 2
			} else {
				end += 2
			}
			b.WriteString(query[i : i+2+end])
			i += 2 + end - 1
			continue
		case ch == '?':
			n++
			b.WriteString("$" + strconv.Itoa(n))
			if args != nil {
				if n > len(args) {
					return "", fmt.Errorf("query has more placeholders than its %d arguments", len(args))
				}
				a := &args[n-1]
				switch v := a.Value.(type) {
				case bool:
					a.Value = int64(0)
					if v {
						a.Value = int64(1)
					}
				case string:
					a.Value = pgText(v)
				case []byte:
					// kiln's schema has no bytea column: bytes (a SQLite
					// value stored as a BLOB in a TEXT column, met by
					// Copy) are text, as Postgres would otherwise store
					// bytea's \x… spelling of them.
					a.Value = pgText(string(v))
				}
				b.WriteString(pgCast(a.Value))
			}
			continue
		}
		b.WriteByte(ch)
	}
	if n == 0 {
		// Written for Postgres already ($1, …: goose's own queries), or
		// without parameters.
		return query, nil
	}
	if args != nil && n != len(args) {
		return "", fmt.Errorf("query has %d placeholders for %d arguments", n, len(args))
	}
	return b.String(), nil
}

// pgCast is the cast that gives a parameter the type of v, one of
// database/sql's driver values; "" for NULL, whose type the statement
// decides.
func pgCast(v driver.Value) string {
	switch v.(type) {
	case int64:
		return "::bigint"
	case string:
		return "::text"
	case float64:
		return "::float8"
	case time.Time:
		return "::timestamptz"
	}
	return ""
}

// unreachable makes err, if it says the database server cannot be reached
// or dropped the connection (refused, reset, shut down, a network
// timeout), an errdefs.ErrUnavailable whose text names nothing of the
// server (users read it; the cause stays in the chain). database/sql's
// own ErrBadConn, which makes it retry on another connection, and a
// caller's cancellation pass unchanged.
func unreachable(err error) error {
	if err == nil || errors.Is(err, driver.ErrBadConn) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		// Class 08: connection exceptions; 57P01-3: the server is shutting
		// down, crashed or starting; 40001 and 40P01: a serialization
		// failure or deadlock, which the same request retried gets past.
		switch {
		case strings.HasPrefix(pe.Code, "08"), pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03":
		case pe.Code == "40001", pe.Code == "40P01":
			return errdefs.Wrapf(errdefs.ErrUnavailable, err, "kiln's database refused the write for a concurrent one; retry")
		default:
			return err
		}
	case errors.As(err, &ce), errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
	default:
		return err
	}
	return unreachableError{cause: err}
}

// unreachableError is a database kiln cannot reach now.
type unreachableError struct{ cause error }

func (e unreachableError) Error() string   { return "kiln's database is unreachable; retry later" }
func (e unreachableError) Unwrap() []error { return []error{errdefs.ErrUnavailable, e.cause} }
