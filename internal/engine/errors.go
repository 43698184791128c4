package engine

import "github.com/kiln-dev/kiln/internal/errdefs"

// invalidf and invalidWrap are a user's mistake (errdefs.Invalidf);
// kindWrap is an error of another kind with its cause.
func invalidf(format string, args ...any) error { return errdefs.Invalidf(format, args...) }

func invalidWrap(cause error, format string, args ...any) error {
	return errdefs.Wrapf(errdefs.ErrInvalid, cause, format, args...)
}

func kindWrap(kind, cause error, format string, args ...any) error {
	return errdefs.Wrapf(kind, cause, format, args...)
}
