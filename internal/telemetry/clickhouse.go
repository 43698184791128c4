package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/redact"
)

// ClickHouse talks to a ClickHouse server over its HTTP interface (port
// 8123): queries are POSTed as the body, inserts as "INSERT INTO t FORMAT
// JSONEachRow" in the query string with the rows as the body. No driver:
// the maintained Go drivers (clickhouse-go v2, ch-go) speak the native
// protocol of current releases and are tested against those only, while
// Debian 12 ships 18.16; the HTTP interface is the same on both.
type ClickHouse struct {
	base     *url.URL // scheme, host, path and settings; no credentials
	database string
	user     *url.Userinfo // sent as basic auth; nil: none
	client   *http.Client
}

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// NewClickHouse parses a server URL, "http://host:8123/?database=kiln"
// (user and password in the URL's userinfo or as user= and password=
// query parameters; either way they are sent as basic auth, never in a
// request's URL). The database is created if it does not exist;
// without one it is "kiln". timeout bounds each request.
func NewClickHouse(raw string, timeout time.Duration) (*ClickHouse, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--clickhouse-url %q: want http://HOST:8123/?database=NAME (ClickHouse's HTTP interface): %w",
			redact.URL(raw), errdefs.ErrInvalid)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("--clickhouse-url %q: %v: %w", redact.URL(raw), err, errdefs.ErrInvalid)
	}
	db := q.Get("database")
	if db == "" {
		db = "kiln"
	}
	if !identRe.MatchString(db) {
		return nil, fmt.Errorf("--clickhouse-url: database %q: use letters, digits and _: %w", db, errdefs.ErrInvalid)
	}
	q.Del("database")
	// Credentials go in each request's basic auth, never in its URL: a
	// URL is what a transport error (*url.Error) and a proxy's log show.
	user := u.User
	if user == nil && (q.Has("user") || q.Has("password")) {
		name := q.Get("user")
		if name == "" {
			name = "default" // ClickHouse's user when none is named
		}
		user = url.UserPassword(name, q.Get("password"))
	}
	q.Del("user")
	q.Del("password")
	u.RawQuery = q.Encode()
	u.User = nil
	return &ClickHouse{base: u, database: db, user: user, client: &http.Client{Timeout: timeout}}, nil
}

// Database is the database kiln's tables are in.
func (c *ClickHouse) Database() string { return c.database }

// Exception is ClickHouse's answer to a request it refused: the HTTP
// status and the exception's code (docs: "Code: N, e.displayText() = …").
type Exception struct {
	Status  int
	Code    int // 0 when the answer carried none
	Message string
}

func (e *Exception) Error() string {
	return fmt.Sprintf("clickhouse: HTTP %d: %s", e.Status, e.Message)
}

// ClickHouse error codes kiln acts on (src/Common/ErrorCodes.cpp).
const (
	codeUnknownTable    = 60
	codeUnknownDatabase = 81
	codeTimeoutExceeded = 159
	codeTooManyQueries  = 202
	codeMemoryLimit     = 241
	codeTooManyParts    = 252
	codeReadonly        = 164 // a replica or a server switched read-only
)

// missingSchema reports an error that recreating the schema cures (the
// server was replaced or its data wiped).
func missingSchema(err error) bool {
	var e *Exception
	return errors.As(err, &e) && (e.Code == codeUnknownTable || e.Code == codeUnknownDatabase)
}

// retryable reports an error worth another try of the same request: no
// answer (refused, reset, timed out), a 5xx of a proxy or an overloaded
// server, or a ClickHouse exception that says "later" or "the schema is
// missing" (the sender recreates it).
func retryable(err error) bool {
	var e *Exception
	if !errors.As(err, &e) {
		return true // no answer from ClickHouse: down, restarting, stopped
	}
	switch e.Code {
	case codeUnknownTable, codeUnknownDatabase, codeTimeoutExceeded, codeTooManyQueries, codeMemoryLimit, codeTooManyParts, codeReadonly:
		return true
	case 0:
		return e.Status >= 500 // a proxy's or load balancer's answer
	}
	return false
}

var codeRe = regexp.MustCompile(`^Code: (\d+)`)

// do POSTs body to the server with query parameters params (query= is
// the statement when the body is data) and returns the answer's body.
func (c *ClickHouse) do(ctx context.Context, params url.Values, body []byte) ([]byte, error) {
	u := *c.base
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if c.user != nil {
		pw, _ := c.user.Password()
		req.SetBasicAuth(c.user.Username(), pw)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		// The *url.Error's text holds the whole URL (the statement, the
		// settings): keep its cause only; the host says where.
		cause := err
		var ue *url.Error
		if errors.As(err, &ue) {
			cause = ue.Err
		}
		var ne net.Error
		if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("clickhouse at %s: %w: %w", c.base.Host, cause, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("clickhouse at %s: %w", c.base.Host, cause)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("clickhouse at %s: %w: %w", c.base.Host, err, errdefs.ErrUnavailable)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Exception{Status: resp.StatusCode, Message: strings.TrimSpace(string(out))}
		if len(e.Message) > 500 {
			e.Message = e.Message[:500] + "…"
		}
		// Current releases name the code in a header; 18.16 only in the
		// body's documented "Code: N, …" prefix.
		if n, err := strconv.Atoi(resp.Header.Get("X-ClickHouse-Exception-Code")); err == nil {
			e.Code = n
		} else if m := codeRe.FindStringSubmatch(e.Message); m != nil {
			e.Code, _ = strconv.Atoi(m[1])
		}
		return nil, e
	}
	return out, nil
}

// Exec runs one statement in kiln's database and returns its output.
func (c *ClickHouse) Exec(ctx context.Context, stmt string) ([]byte, error) {
	return c.do(ctx, url.Values{"database": {c.database}}, []byte(stmt))
}

// Insert inserts JSONEachRow rows (one JSON object a line) into table.
// Fields the table does not have are ignored, so rows a newer kiln
// spooled still go into an older schema.
func (c *ClickHouse) Insert(ctx context.Context, table string, rows []byte) error {
	_, err := c.do(ctx, url.Values{
		"database":                         {c.database},
		"query":                            {"INSERT INTO " + table + " FORMAT JSONEachRow"},
		"input_format_skip_unknown_fields": {"1"},
	}, rows)
	return err
}

// createDatabase creates kiln's database (the request names none: it may
// not exist yet).
func (c *ClickHouse) createDatabase(ctx context.Context) error {
	_, err := c.do(ctx, nil, []byte("CREATE DATABASE IF NOT EXISTS "+c.database))
	return err
}
