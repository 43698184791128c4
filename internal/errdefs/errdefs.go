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

// ErrDiskFull marks a write that failed because kiln's data disk has no
// room (ENOSPC, or SQLite's "database or disk is full"). Errors of it are
// also of kind ErrExhausted, so the edges answer ResourceExhausted; use
// [DiskFull] to make one.
var ErrDiskFull = errors.New("data disk full")

// IsDiskFull reads [ErrDiskFull] from a wrapped error.
func IsDiskFull(err error) bool { return errors.Is(err, ErrDiskFull) }
