package engine

import (
	"fmt"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// kindError carries a message and the errdefs sentinel it belongs to. Its
// text is only the message, so users read "--secret "x": missing id=" rather
// than a message followed by ": invalid argument".
type kindError struct {
	msg  string
	kind error
	err  error // optional cause
}

func (e *kindError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

// Unwrap exposes both the sentinel kind and the cause.
func (e *kindError) Unwrap() []error {
	if e.err != nil {
		return []error{e.kind, e.err}
	}
	return []error{e.kind}
}

// invalidf returns an error wrapping errdefs.ErrInvalid.
func invalidf(format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: errdefs.ErrInvalid}
}

// invalidWrap returns an error wrapping errdefs.ErrInvalid and cause.
func invalidWrap(cause error, format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: errdefs.ErrInvalid, err: cause}
}

// kindWrap returns an error wrapping kind and cause.
func kindWrap(kind, cause error, format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: kind, err: cause}
}
