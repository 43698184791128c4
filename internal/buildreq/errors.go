package buildreq

import "github.com/kiln-dev/kiln/internal/errdefs"

// invalidf and invalidWrap are a user's mistake (errdefs.Invalidf).
func invalidf(format string, args ...any) error { return errdefs.Invalidf(format, args...) }

func invalidWrap(cause error, format string, args ...any) error {
	return errdefs.Wrapf(errdefs.ErrInvalid, cause, format, args...)
}
