package errdefs

import "fmt"

// kindError carries a message and the kind it belongs to. Its text is only
// the message (and the cause), so users read `--secret "x": missing id=`
// rather than a message followed by ": invalid argument".
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

// Unwrap exposes both the kind and the cause.
func (e *kindError) Unwrap() []error {
	if e.err != nil {
		return []error{e.kind, e.err}
	}
	return []error{e.kind}
}

// Invalidf is a user's mistake: an error of kind ErrInvalid whose text is
// only the message.
func Invalidf(format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: ErrInvalid}
}

// InvalidWrapf is [Invalidf] with the error that caused it.
func InvalidWrapf(cause error, format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: ErrInvalid, err: cause}
}

// Wrapf is an error of kind whose text is the message and cause's.
func Wrapf(kind, cause error, format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: kind, err: cause}
}

// DiskFull is the error for a write that kiln's data disk had no room for:
// of kinds ErrExhausted and ErrDiskFull, its text says so, how much room
// is left (free, in bytes; < 0 when unknown) and what to do. It never
// names a path: users read it.
func DiskFull(free int64) error {
	left := ""
	if free >= 0 {
		left = fmt.Sprintf(" (%d bytes free)", free)
	}
	return &kindError{msg: "kiln's data disk is full" + left + "; the server's operator must free space on it, then retry", kind: diskFull{}}
}

// diskFull is both kinds a full data disk is.
type diskFull struct{}

func (diskFull) Error() string   { return ErrDiskFull.Error() }
func (diskFull) Unwrap() []error { return []error{ErrExhausted, ErrDiskFull} }
