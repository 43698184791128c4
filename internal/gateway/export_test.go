package gateway

import "io"

// Pump is pump, for the package's external tests.
var Pump = pump

// NewTapReader reads r, reporting to onSolve the ref of every BuildKit
// Solve call in it (an HTTP/2 client stream) and to onStop why the tap
// gave up, if it does.
func NewTapReader(r io.Reader, onSolve func(ref, label string), onStop func(error)) io.Reader {
	return tapReader{r: r, t: newTap(onSolve, onStop)}
}
