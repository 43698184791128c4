package gateway

import (
	"io"
	"sync"
)

// maxBatch bounds what pump holds between its reader and its writer.
const maxBatch = 256 << 10

// pump copies src to dst until src ends or either fails, and returns the
// first error (nil at src's end).
//
// A TLS connection's Read returns one record (at most 16 KiB) at a time;
// written one by one to the builder's socket, a bulk context transfer costs
// the builder a wakeup and a read per record. pump reads in one goroutine
// and writes in another, and each write takes everything read since the
// last one, so a transfer moves in large writes while a lone gRPC frame
// still goes out at once (nothing waits for a batch to fill).
func pump(dst io.Writer, src io.Reader) error {
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		pending []byte // read, not yet written
		readErr error  // src's end (io.EOF) or failure
		stopped bool   // the writer failed: the reader stops
	)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			mu.Lock()
			for len(pending) >= maxBatch && !stopped {
				cond.Wait()
			}
			if stopped {
				mu.Unlock()
				return
			}
			pending = append(pending, buf[:n]...)
			if err != nil {
				readErr = err
			}
			cond.Broadcast()
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	var out []byte
	for {
		mu.Lock()
		for len(pending) == 0 && readErr == nil {
			cond.Wait()
		}
		// Swap buffers: the reader appends to the one just written.
		out, pending = pending, out[:0]
		rerr := readErr
		cond.Broadcast()
		mu.Unlock()
		if len(out) > 0 {
			if _, err := dst.Write(out); err != nil {
				mu.Lock()
				stopped = true
				cond.Broadcast()
				mu.Unlock()
				return err
			}
		}
		// The reader set readErr with its last bytes, in one critical
		// section: once it is seen, the swap above took everything.
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}
