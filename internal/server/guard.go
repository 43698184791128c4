package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Defaults of Config's body timeouts.
const (
	DefaultBodyTimeout       = 30 * time.Second
	DefaultStreamBodyTimeout = 10 * time.Minute
)

// publicBodyLimit bounds the body of a public procedure: anyone may send
// one, and a device login's messages are a few bytes.
const publicBodyLimit = 64 << 10

// clientStreams are the procedures whose clients stream messages, which may
// be minutes apart (a status stream is silent while a RUN step prints
// nothing). Their bodies get StreamBodyTimeout instead of BodyTimeout; they
// are never public. TestClientStreamsListed keeps the list complete.
var clientStreams = map[string]bool{
	"/depot.cli.v1.BuildService/ReportStatusStream":   true,
	"/depot.buildkit.v1.BuildKitService/ReportHealth": true,
}

// guard is the first handler of every request, before any handler reads
// its body:
//
//   - A Connect procedure (a path /<package>.<Service>/<Method>) other than
//     publicProcedures is refused, Unauthenticated in the request's protocol,
//     unless it carries a valid bearer token. Connect decodes a unary
//     message (up to the handler's read limit, 16 MiB) before interceptors
//     run, so without this an anonymous caller could make the server hold
//     that much per request. The principal rides in the context, and the
//     interceptor does not look the token up again.
//   - A public procedure's body is read anonymously up to publicBodyLimit.
//   - Every request body is read under an idle deadline (idleBody): a read
//     that waits BodyTimeout (StreamBodyTimeout for clientStreams) for data
//     fails and the connection is dropped. Whole-request timeouts would cut
//     long uploads; this cuts only bodies that stop moving.
//
// The other routes (the registry, upload URLs, the login page) check their
// own credentials before reading a body, and bound what they read.
type guard struct {
	next          http.Handler
	authn         *auth.Authenticator
	logger        *slog.Logger
	bodyTimeout   time.Duration
	streamTimeout time.Duration
	errors        *connect.ErrorWriter
	// refused is told of each refusal (metrics.APIRefused): a kiln
	// procedure's name, or "(unknown procedure)"; nil → nobody.
	refused func(procedure string, err error)
}

func newGuard(next http.Handler, authn *auth.Authenticator, cfg Config) *guard {
	g := &guard{next: next, authn: authn, logger: cfg.Logger, bodyTimeout: cfg.BodyTimeout,
		streamTimeout: cfg.StreamBodyTimeout, errors: connect.NewErrorWriter()}
	if g.bodyTimeout == 0 {
		g.bodyTimeout = DefaultBodyTimeout
	}
	if g.streamTimeout == 0 {
		g.streamTimeout = DefaultStreamBodyTimeout
	}
	return g
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	idle := g.bodyTimeout
	if procedure, ok := procedurePath(r.URL.Path); ok {
		if publicProcedures[procedure] {
			if r.ContentLength > publicBodyLimit {
				g.refuse(w, r, procedure, fmt.Errorf("request of %d bytes is larger than the %d bytes a login message may have: %w",
					r.ContentLength, publicBodyLimit, errdefs.ErrExhausted))
				return
			}
			r = withBody(r, http.MaxBytesReader(w, r.Body, publicBodyLimit))
		} else {
			p, err := g.authn.Authenticate(r.Context(), auth.Bearer(r.Header.Get("Authorization")))
			if err != nil {
				g.refuse(w, r, procedure, err)
				return
			}
			r = r.WithContext(auth.WithPrincipal(r.Context(), p))
			if clientStreams[procedure] {
				idle = g.streamTimeout
			}
		}
	}
	if idle > 0 && r.Body != nil && r.Body != http.NoBody {
		r = withBody(r, &idleBody{body: r.Body, rc: http.NewResponseController(w), timeout: idle})
	}
	g.next.ServeHTTP(w, r)
}

// refuse answers a Connect request with err, without reading its body, and
// audits the refusal.
func (g *guard) refuse(w http.ResponseWriter, r *http.Request, procedure string, err error) {
	ctx := r.Context()
	cerr := depot.ToConnect(ctx, g.logger, err)
	name := procedure
	if !knownProcedure(procedure) {
		name = "(unknown procedure)" // never a client-chosen string in the audit log
	}
	// Logged through the audit hook (throttled for bad tokens; setupOIDC).
	auditDenied(ctx, g.authn, name, r.RemoteAddr, cerr)
	if g.refused != nil {
		g.refused(name, cerr)
	}
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		// Else net/http would read up to 256 KiB of the body it was refused
		// for, before answering, to keep the connection.
		w.Header().Set("Connection", "close")
	}
	g.errors.Write(w, r, cerr)
}

// withBody is a shallow copy of r reading body. The server's own *Request
// keeps its body, so net/http still knows how much of it is left unread.
func withBody(r *http.Request, body io.ReadCloser) *http.Request {
	r = r.WithContext(r.Context())
	r.Body = body
	return r
}

// procedurePath reports whether path names a Connect (or gRPC) procedure:
// /<package>.<Service>/<Method>. Nothing else kiln serves has a dot in its
// first path segment.
func procedurePath(path string) (string, bool) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok || !strings.Contains(svc, ".") || method == "" || strings.Contains(method, "/") {
		return "", false
	}
	return path, true
}

// knownProcedure reports a procedure kiln serves: a method of a service in
// the linked protobuf registry, or one of the lists above.
func knownProcedure(procedure string) bool {
	if publicProcedures[procedure] || clientStreams[procedure] {
		return true
	}
	name := protoreflect.FullName(strings.ReplaceAll(strings.Trim(procedure, "/"), "/", "."))
	if !name.IsValid() {
		return false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return false
	}
	_, ok := d.(protoreflect.MethodDescriptor)
	return ok
}

// idleBody fails a read of a request body that waits longer than timeout
// for data, through the connection's read deadline: each read pushes the
// deadline out (at most every timeout/8, so a stalled body is dropped
// between 7/8 and all of timeout after its last byte). A failed read leaves
// the deadline passed, so net/http does not wait on the stalled client
// again before closing the connection. At the end of the body the deadline
// is cleared: net/http then reads the connection in the background to
// notice the client leaving, which a deadline would turn into a cancel.
//
// A body is read by one goroutine at a time; set is that reader's.
type idleBody struct {
	body    io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	set     time.Time // when the deadline was last pushed out
	off     bool      // the connection has no read deadlines; reads are not bounded
}

func (b *idleBody) Read(p []byte) (int, error) {
	if now := time.Now(); !b.off && now.Sub(b.set) >= b.timeout/8 {
		if err := b.rc.SetReadDeadline(now.Add(b.timeout)); err != nil {
			b.off = true
		} else {
			b.set = now
		}
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		if !b.off {
			b.rc.SetReadDeadline(time.Time{})
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("request body sent nothing for %s: %w", b.timeout, err)
	}
	return n, err
}

func (b *idleBody) Close() error { return b.body.Close() }
