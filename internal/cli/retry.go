package cli

import (
	"context"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/retry"
)

// retryUnavailable is [retry.API] for one Connect call: a call that got no
// answer is tried again; a call the server answered never is.
func retryUnavailable[T any](ctx context.Context, call func() (*connect.Response[T], error)) (*connect.Response[T], error) {
	return retry.Value(ctx, retry.API, func(context.Context) (*connect.Response[T], error) { return call() })
}

// isTransient reports whether err means the call got no answer.
func isTransient(err error) bool { return retry.Transient(err) }
