package buildreq

import (
	"fmt"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// invalidError is a user's mistake: its text is only the message, so users
// read `--secret "x": missing id=` rather than a message followed by
// ": invalid argument", and it wraps errdefs.ErrInvalid (and the cause).
type invalidError struct {
	msg string
	err error // optional cause
}

func (e *invalidError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *invalidError) Unwrap() []error {
	if e.err != nil {
		return []error{errdefs.ErrInvalid, e.err}
	}
	return []error{errdefs.ErrInvalid}
}

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

func invalidWrap(cause error, format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...), err: cause}
}
