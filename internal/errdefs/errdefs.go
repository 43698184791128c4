// Package errdefs is kiln's one error vocabulary. Domain code wraps these
// sentinel kinds (fmt.Errorf("project %q: %w", id, errdefs.ErrNotFound)); the
// edges (Connect handlers, the registry, the CLI) map them to wire codes. It
// depends on nothing else in kiln.
package errdefs

import "errors"

var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalid            = errors.New("invalid argument")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrPermission         = errors.New("permission denied")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")
	ErrExhausted          = errors.New("resource exhausted")
	ErrCanceled           = errors.New("canceled")
	// ErrExpired: something had a deadline and it passed (a device login).
	ErrExpired = errors.New("expired")
)

// IsNotFound and friends read a wrapped kind.
func IsNotFound(err error) bool    { return errors.Is(err, ErrNotFound) }
func IsInvalid(err error) bool     { return errors.Is(err, ErrInvalid) }
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }
