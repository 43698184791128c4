package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"time"
)

// Option tunes OpenSQLite.
type Option func(*options)

type options struct {
	observe func(op string, d time.Duration)
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

// openDB opens the database at dsn with the registered "sqlite" driver;
// with an observer, through connections that time what they do.
func openDB(dsn string, o options) (*sql.DB, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil || o.observe == nil {
		return db, err
	}
	drv := db.Driver()
	db.Close() // nothing was opened yet: sql.Open connects lazily
	return sql.OpenDB(observedConnector{dsn: dsn, drv: drv, observe: o.observe}), nil
}

// observedConnector opens observed connections.
type observedConnector struct {
	dsn     string
	drv     driver.Driver
	observe func(op string, d time.Duration)
}

func (c observedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return &observedConn{Conn: conn, observe: c.observe}, nil
}

func (c observedConnector) Driver() driver.Driver { return c.drv }

// observedConn times queries, execs and transactions, and passes
// everything else to the driver's connection, which implements each of
// these interfaces (modernc.org/sqlite's does). Prepared statements are
// not timed: the store does not prepare any.
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
