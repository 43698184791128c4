// Package depot serves Depot's Connect services (depot.core.v1,
// depot.cli.v1, depot.build.v1, depot.buildkit.v1) on kiln's domain. Handlers
// are thin: decode, take the caller from the context, call the domain, and
// convert errdefs kinds to Connect codes in one place (ToConnect).
package depot

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// ToConnect converts a domain error to a Connect error. Messages of known
// kinds are the domain's own (they name the problem, never internals);
// anything else is logged and answered as a bare Internal error.
func ToConnect(ctx context.Context, logger *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
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
