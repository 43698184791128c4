package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"time"
)

// Option tunes OpenSQLite and OpenPostgres.
type Option func(*options)

type options struct {
	observe   func(op string, d time.Duration)
	exclusive bool
}

// Exclusive has OpenPostgres refuse a database another store opened
// Exclusive holds (errdefs.ErrUnavailable), until that one closes: kiln
// serve takes it, as two servers on one database would each take the
// other's running builds for ones a crash interrupted. It is a session
// lock on one connection the store keeps: should that connection drop
// (Postgres restarted), the database is no longer held. SQLite ignores it.
func Exclusive() Option {
	return func(o *options) { o.exclusive = true }
}

// Store operations an observer is told of (WithObserver): the op values.
const (
	OpQuery = "query" // a SELECT, from its start until its rows are closed
	OpExec  = "exec"  // an INSERT, UPDATE or DELETE outside a transaction or in one
	OpTx    = "tx"    // a whole transaction, from BEGIN to COMMIT or ROLLBACK
)

// WithObserver has the store tell observe how long each database
// operation took (op is OpQuery, OpExec or OpTx), for kiln's metrics. It
// is called on the caller's goroutine and must not block.
func WithObserver(observe func(op string, d time.Duration)) Option {
	return func(o *options) { o.observe = observe }
}

// openDB opens the database base connects to: through connections that
// rewrite the store's placeholders for Postgres (rebind), and time what
// they do for an observer, if there is one. sql.OpenDB connects lazily.
func openDB(base driver.Connector, rebind bool, o options) *sql.DB {
	return sql.OpenDB(connector{base: base, rebind: rebind, observe: o.observe})
}

// connector opens the store's connections.
type connector struct {
	base    driver.Connector
	rebind  bool
	observe func(op string, d time.Duration) // nil: not observed
}

func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.base.Connect(ctx)
	if err != nil {
		if c.rebind { // Postgres, on another machine
			err = unreachable(err)
		}
		return nil, err
	}
	if c.rebind {
		conn = &rebindConn{Conn: conn}
	}
	if c.observe != nil {
		conn = &observedConn{Conn: conn, observe: c.observe}
	}
	return conn, nil
}

func (c connector) Driver() driver.Driver { return c.base.Driver() }

// dsnConnector connects with a driver that has no connectors of its own.
type dsnConnector struct {
	dsn string
	drv driver.Driver
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }

// observedConn times queries, execs and transactions, and passes
// everything else to the driver's connection, which implements each of
// these interfaces (modernc.org/sqlite's, pgx's and rebindConn do).
// Prepared statements are not timed: the store does not prepare any.
type observedConn struct {
	driver.Conn
	observe func(op string, d time.Duration)
}

var (
	_ driver.ConnBeginTx        = (*observedConn)(nil)
	_ driver.ConnPrepareContext = (*observedConn)(nil)
	_ driver.ExecerContext      = (*observedConn)(nil)
	_ driver.QueryerContext     = (*observedConn)(nil)
	_ driver.Pinger             = (*observedConn)(nil)
	_ driver.SessionResetter    = (*observedConn)(nil)
	_ driver.Validator          = (*observedConn)(nil)
)

func (c *observedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	start := time.Now()
	tx, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &observedTx{Tx: tx, start: start, observe: c.observe}, nil
}

func (c *observedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
}

func (c *observedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	start := time.Now()
	res, err := c.Conn.(driver.ExecerContext).ExecContext(ctx, query, args)
	c.observe(OpExec, time.Since(start))
	return res, err
}

func (c *observedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	start := time.Now()
	rows, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, query, args)
	if err != nil {
		c.observe(OpQuery, time.Since(start))
		return nil, err
	}
	return &observedRows{Rows: rows, start: start, observe: c.observe}, nil
}

func (c *observedConn) Ping(ctx context.Context) error {
	return c.Conn.(driver.Pinger).Ping(ctx)
}

func (c *observedConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *observedConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// observedTx reports its transaction's time when it ends.
type observedTx struct {
	driver.Tx
	start   time.Time
	observe func(op string, d time.Duration)
}

func (t *observedTx) Commit() error {
	err := t.Tx.Commit()
	t.observe(OpTx, time.Since(t.start))
	return err
}

func (t *observedTx) Rollback() error {
	err := t.Tx.Rollback()
	t.observe(OpTx, time.Since(t.start))
	return err
}

// observedRows reports its query's time when its rows are closed (SQLite
// steps through the result as they are read).
type observedRows struct {
	driver.Rows
	start   time.Time
	observe func(op string, d time.Duration)
	closed  bool
}

func (r *observedRows) Close() error {
	err := r.Rows.Close()
	if !r.closed {
		r.closed = true
		r.observe(OpQuery, time.Since(r.start))
	}
	return err
}
