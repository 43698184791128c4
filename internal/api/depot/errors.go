// Package depot serves Depot's Connect services (depot.core.v1,
// depot.cli.v1, depot.build.v1, depot.buildkit.v1) on kiln's domain. Handlers
// are thin: decode, take the caller from the context, call the domain, and
// convert errdefs kinds to Connect codes in one place (ToConnect).
package depot

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// ToConnect converts a domain error to a Connect error. Messages of known
// kinds are the domain's own (they name the problem, never internals);
// anything else is logged and answered as a bare Internal error. As a
// safety net, a server path (WithServerPaths) in a message is replaced,
// and the error logged whole.
func ToConnect(ctx context.Context, logger *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	return Redact(ctx, logger, toConnect(ctx, logger, err))
}

func toConnect(ctx context.Context, logger *slog.Logger, err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	kinds := []struct {
		kind error
		code connect.Code
	}{
		{errdefs.ErrNotFound, connect.CodeNotFound},
		{errdefs.ErrAlreadyExists, connect.CodeAlreadyExists},
		{errdefs.ErrInvalid, connect.CodeInvalidArgument},
		{errdefs.ErrUnauthenticated, connect.CodeUnauthenticated},
		{errdefs.ErrPermission, connect.CodePermissionDenied},
		{errdefs.ErrFailedPrecondition, connect.CodeFailedPrecondition},
		{errdefs.ErrUnavailable, connect.CodeUnavailable},
		{errdefs.ErrExhausted, connect.CodeResourceExhausted},
		{errdefs.ErrCanceled, connect.CodeCanceled},
		{errdefs.ErrExpired, connect.CodeDeadlineExceeded},
	}
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			return connect.NewError(k.code, errors.New(err.Error()))
		}
	}
	if errors.Is(err, context.Canceled) {
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	}
	logger.ErrorContext(ctx, "internal error", "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error; see the server log"))
}

type serverPathsKey struct{}

// WithServerPaths returns ctx carrying the server's own directories (its
// data directory): no message answered to a client in ctx may name them
// (ToConnect, Redact). The server puts them in every request's context.
func WithServerPaths(ctx context.Context, dirs ...string) context.Context {
	var roots []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if abs, err := filepath.Abs(d); err == nil {
			d = abs
		}
		roots = append(roots, filepath.Clean(d))
		if real, err := filepath.EvalSymlinks(d); err == nil && real != filepath.Clean(d) {
			roots = append(roots, real)
		}
	}
	return context.WithValue(ctx, serverPathsKey{}, roots)
}

// serverPathNote stands in a client's message for a removed server path.
const serverPathNote = "(a path on the server; see the server log)"

// Redact answers err with every server path of ctx (WithServerPaths) in
// its message replaced, logging the whole error when it replaced one.
// Errors without one are returned as they are.
func Redact(ctx context.Context, logger *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	roots, _ := ctx.Value(serverPathsKey{}).([]string)
	if len(roots) == 0 {
		return err
	}
	code := connect.CodeUnknown
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		code, msg = ce.Code(), ce.Message()
	}
	clean, changed := redactPaths(msg, roots)
	if !changed {
		return err
	}
	logger.WarnContext(ctx, "a server path was removed from an error answered to a client", "err", err)
	out := connect.NewError(code, errors.New(clean))
	if ce != nil {
		for k, v := range ce.Meta() {
			out.Meta()[k] = v
		}
	}
	return out
}

// redactPaths replaces each path in msg under one of roots (the root and
// what follows it up to a space, quote, comma or colon). A longer name that
// only starts like a root (/srv/kiln2 for /srv/kiln) is left alone.
func redactPaths(msg string, roots []string) (string, bool) {
	changed := false
	for _, root := range roots {
		if len(root) < 2 {
			continue
		}
		var b strings.Builder
		rest := msg
		for {
			i := strings.Index(rest, root)
			if i < 0 {
				b.WriteString(rest)
				break
			}
			end := i + len(root)
			if end < len(rest) && rest[end] != '/' && !pathEnd(rest[end]) {
				b.WriteString(rest[:end])
				rest = rest[end:]
				continue
			}
			for end < len(rest) && !pathEnd(rest[end]) {
				end++
			}
			b.WriteString(rest[:i])
			b.WriteString(serverPathNote)
			rest = rest[end:]
			changed = true
		}
		msg = b.String()
	}
	return msg, changed
}

func pathEnd(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '"', '\'', ',', ':', ';', ')', ']', '}', '`':
		return true
	}
	return false
}

// Caller returns the authenticated caller of a Connect handler (kiln.v1's
// too); the auth interceptor has run before every handler, so a missing one
// is a wiring bug answered safely.
func Caller(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("missing token"))
	}
	return p, nil
}
