// Package client is the CLI side's view of a kiln server: where it is,
// which token and project to use (flags, environment, kiln.json/depot.json,
// the login file), and Connect clients for the Depot services. It never
// imports server packages.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/build/v1/buildv1connect"
	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	"connectrpc.com/connect"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"
)

// DefaultAddr is where `kiln serve` listens unless told otherwise.
const DefaultAddr = "127.0.0.1:7420"

// DefaultAPIURL is the local server.
const DefaultAPIURL = "http://" + DefaultAddr

// DefaultDataDir is the server's data directory: /var/lib/kiln for root,
// else under the user's XDG data dir.
func DefaultDataDir() string {
	if d := os.Getenv("KILN_DATA"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/kiln"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "kiln")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "kiln")
}

// LoginFile is where `kiln login` keeps the API URL and token.
func LoginFile() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "kiln", "config.json")
}

// Login is the saved login.
type Login struct {
	APIURL string `json:"api_url,omitempty"`
	Token  string `json:"token,omitempty"`
}

// ReadLogin reads the login file; a missing file is an empty login.
func ReadLogin() Login {
	var l Login
	b, err := os.ReadFile(LoginFile())
	if err == nil {
		_ = json.Unmarshal(b, &l)
	}
	return l
}

// SaveLogin writes the login file (0600).
func SaveLogin(l Login) error {
	path := LoginFile()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// Config is a resolved client configuration.
type Config struct {
	APIURL string
	Token  string
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// Resolve picks the API URL and token: flag, then KILN_*, then DEPOT_*,
// then the login file; a local server's admin token is the last resort so
// `kiln build` works on one machine with no setup.
func Resolve(apiURLFlag, tokenFlag string) (Config, error) {
	apiURL, err := ResolveAPIURL(apiURLFlag)
	c := Config{APIURL: apiURL, Token: firstNonEmpty(tokenFlag, os.Getenv("KILN_TOKEN"), os.Getenv("DEPOT_TOKEN"), ReadLogin().Token)}
	if err != nil {
		return c, err
	}
	if c.Token == "" && isLocalDefault(c.APIURL) {
		if b, err := os.ReadFile(filepath.Join(DefaultDataDir(), "admin.token")); err == nil {
			c.Token = strings.TrimSpace(string(b))
		}
	}
	if c.Token == "" {
		// Say first whether a server answers there at all: a wrong --api-url
		// is the likelier mistake, and no token would not fix it.
		if err := Probe(c.APIURL); err != nil {
			return c, err
		}
		return c, fmt.Errorf("no token for the kiln server at %s: pass --token, set KILN_TOKEN (or DEPOT_TOKEN), or run 'kiln login'", c.APIURL)
	}
	return c, nil
}

// isLocalDefault reports whether apiURL is a server on this machine at
// kiln serve's default port, however loopback is spelled (127.0.0.1,
// localhost, ::1): the server whose data dir holds the admin token.
func isLocalDefault(apiURL string) bool {
	u, err := url.Parse(apiURL)
	if err != nil || u.Scheme != "http" || (u.Path != "" && u.Path != "/") {
		return false
	}
	_, port, _ := net.SplitHostPort(DefaultAddr)
	switch u.Hostname() {
	case "127.0.0.1", "localhost", "::1":
		return u.Port() == port
	}
	return false
}

// Probe checks that a kiln server answers at apiURL (GET /healthz) and
// otherwise says so, naming the URL: "no kiln server answers at
// http://127.0.0.1:7421 (connection refused)".
func Probe(apiURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("API URL %q: %w", apiURL, err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return unreachable(apiURL, err)
	}
	res.Body.Close()
	return nil
}

// unreachable is the error for a server that could not be reached, or nil
// when err is not about reaching it.
func unreachable(apiURL string, err error) error {
	var reason string
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		reason = "connection refused"
	case errors.As(err, &dnsErr):
		reason = "unknown host " + dnsErr.Name
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		reason = "no answer in time"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		reason = opErr.Err.Error()
	default:
		return nil
	}
	return &UnreachableError{URL: apiURL, Reason: reason}
}

// UnreachableError is a server that could not be reached at all at URL:
// the connection was refused, the host is unknown or nothing answered.
type UnreachableError struct {
	URL    string
	Reason string // "connection refused", "unknown host HOST", …
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("no kiln server answers at %s (%s); start one with 'kiln serve' or pass the right --api-url", e.URL, e.Reason)
}

// reachability names the API URL when a request cannot reach the server
// at all, instead of a bare dial error.
type reachability string

func (r reachability) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if ctx.Err() == nil {
			err = r.name(err)
		}
		return res, err
	}
}

func (r reachability) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		return reachableConn{StreamingClientConn: next(ctx, spec), r: r}
	}
}

// name turns err into the unreachable error naming the URL when it is
// one of not reaching the server at all.
func (r reachability) name(err error) error {
	if err != nil && connect.CodeOf(err) == connect.CodeUnavailable {
		if u := unreachable(string(r), err); u != nil {
			return connect.NewError(connect.CodeUnavailable, u)
		}
	}
	return err
}

// reachableConn is a stream whose errors name the API URL when the server
// cannot be reached.
type reachableConn struct {
	connect.StreamingClientConn
	r reachability
}

func (c reachableConn) Send(m any) error    { return c.r.name(c.StreamingClientConn.Send(m)) }
func (c reachableConn) Receive(m any) error { return c.r.name(c.StreamingClientConn.Receive(m)) }

func (r reachability) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// ProjectFile is the contents of kiln.json / depot.json.
type ProjectFile struct {
	ID string `json:"id"`
}

// FindProject returns the project id: flag, KILN_PROJECT_ID,
// DEPOT_PROJECT_ID, then kiln.json or depot.json found walking up from dir.
func FindProject(flag, dir string) (string, error) {
	if id := firstNonEmpty(flag, os.Getenv("KILN_PROJECT_ID"), os.Getenv("DEPOT_PROJECT_ID")); id != "" {
		return id, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := abs; ; d = filepath.Dir(d) {
		for _, name := range []string{"kiln.json", "depot.json"} {
			b, err := os.ReadFile(filepath.Join(d, name))
			if err != nil {
				continue
			}
			var pf ProjectFile
			if err := json.Unmarshal(b, &pf); err != nil {
				return "", fmt.Errorf("%s: %v", filepath.Join(d, name), err)
			}
			if pf.ID == "" {
				return "", fmt.Errorf("%s: no \"id\"", filepath.Join(d, name))
			}
			return pf.ID, nil
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	return "", errors.New("no project: pass --project, set KILN_PROJECT_ID, or write kiln.json with {\"id\": \"...\"} (create one with `kiln projects create NAME`)")
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Header().Get("Authorization") == "" {
			req.Header().Set("Authorization", "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if conn.RequestHeader().Get("Authorization") == "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// WithToken overrides the bearer token of one request (build tokens).
func WithToken[T any](req *connect.Request[T], token string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+token)
	return req
}

func (c Config) opts() []connect.ClientOption {
	return []connect.ClientOption{connect.WithInterceptors(reachability(c.APIURL), bearer(c.Token))}
}

// Projects is a depot.core.v1.ProjectService client.
func (c Config) Projects() corev1connect.ProjectServiceClient {
	return corev1connect.NewProjectServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}

// CoreBuilds is a depot.core.v1.BuildService client: a build's step
// counts and the time its cache saved.
func (c Config) CoreBuilds() corev1connect.BuildServiceClient {
	return corev1connect.NewBuildServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}

// PublicBuilds is a depot.build.v1.BuildService client: a build's steps.
func (c Config) PublicBuilds() buildv1connect.BuildServiceClient {
	return buildv1connect.NewBuildServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}

// Builds is a depot.cli.v1.BuildService client.
func (c Config) Builds() cliv1connect.BuildServiceClient {
	return cliv1connect.NewBuildServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
