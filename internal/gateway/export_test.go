package gateway

import "io"

// Pump is pump, for the package's external tests.
var Pump = pump

// NewTapReader reads r, reporting to onSolve the ref of every BuildKit
// Solve call in it (an HTTP/2 client stream) and to onStop why the tap
// gave up, if it does. The tap has a budget of its own, as large as a
// gateway's.
func NewTapReader(r io.Reader, onSolve func(ref, label string), onStop func(error)) io.Reader {
	return NewTapReaderIn(NewTapBudget(tapBudget), r, onSolve, onStop)
}

// TapBudget is the memory shared by taps.
type TapBudget = budget

// NewTapBudget returns a budget of n bytes.
func NewTapBudget(n int64) *TapBudget { return newBudget(n) }

// Left is what the budget has not given out.
func (b *budget) Left() int64 { return b.left.Load() }

// NewTapReaderIn is NewTapReader with a tap taking from b.
func NewTapReaderIn(b *TapBudget, r io.Reader, onSolve func(ref, label string), onStop func(error)) io.Reader {
	return tapReader{r: r, t: newTap(b, onSolve, onStop)}
}

// TapMemoryLeft is what the gateway's solve taps have not taken of their
// budget.
func (g *Gateway) TapMemoryLeft() int64 { return g.tapMem.Left() }

// TapBudgetSize is a gateway's budget for its taps.
const TapBudgetSize = tapBudget
