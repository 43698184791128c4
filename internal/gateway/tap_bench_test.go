package gateway_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/gateway"
)

// BenchmarkTapSkipsBulkData measures what the tap costs a context
// transfer: DATA frames of streams that are not Solve calls, which it
// counts past without copying.
func BenchmarkTapSkipsBulkData(b *testing.B) {
	frame := make([]byte, 9+16<<10)
	frame[0], frame[1], frame[2] = 0, 0x40, 0 // 16 KiB
	frame[3], frame[8] = 0, 3                 // DATA on stream 3
	chunk := bytes.Repeat(frame, 4)           // about one 64 KiB read
	for _, tapped := range []bool{false, true} {
		b.Run(map[bool]string{false: "untapped", true: "tapped"}[tapped], func(b *testing.B) {
			var r io.Reader = &repeat{chunk: chunk}
			if tapped {
				r = io.MultiReader(strings.NewReader("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), r)
				r = gateway.NewTapReader(r, func(string, string) {}, func(error) { b.Error("the tap gave up") })
			}
			b.SetBytes(int64(len(chunk)))
			buf := make([]byte, 64<<10)
			if _, err := io.CopyBuffer(io.Discard, io.LimitReader(r, int64(b.N*len(chunk))), buf); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// repeat reads chunk again and again.
type repeat struct {
	chunk []byte
	off   int
}

func (r *repeat) Read(p []byte) (int, error) {
	n := copy(p, r.chunk[r.off:])
	r.off = (r.off + n) % len(r.chunk)
	return n, nil
}
