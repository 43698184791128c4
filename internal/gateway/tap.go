package gateway

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kiln-dev/kiln/internal/steps"
)

// solvePath is the gRPC method whose request names a build's ref.
const solvePath = "/moby.buildkit.v1.Control/Solve"

// Bounds of what a tap holds. Past any of them the tap stops: the
// connection goes on, its solves are just not reported.
const (
	// maxSolveMessage bounds one Solve request (its LLB definition is
	// most of it), compressed or not: buildkitd's own limit on a request
	// it receives (containerd's defaults.DefaultMaxRecvMsgSize, which
	// buildkitd's gRPC server is given), so a larger one fails anyway.
	maxSolveMessage = 16 << 20
	// maxHeaderBlock bounds one header block (HEADERS + CONTINUATION).
	maxHeaderBlock = 1 << 20
	// maxSolveStreams bounds the Solve streams waiting for their request.
	maxSolveStreams = 64
	// tapBudget bounds what all of a gateway's taps hold together (see
	// budget): a tap holds up to about maxSolveMessage twice (a gzipped
	// request and its inflated form) and connections are not bounded.
	tapBudget = 256 << 20
	// keepBuffer is the largest frame or header block buffer a tap keeps
	// for the next one; a larger one is given back once used.
	keepBuffer = 64 << 10
)

// budget is memory shared by a gateway's taps. A tap takes from it every
// byte of buffer it allocates (frames and header blocks being read, Solve
// requests waiting for their ref, an inflated request) before allocating,
// and gives it back when done or at the connection's end. A tap that cannot
// take what it needs stops tapping (its connection goes on untouched):
// observing solves is best-effort, never a reason to fail a build.
type budget struct{ left atomic.Int64 }

func newBudget(n int64) *budget {
	b := &budget{}
	b.left.Store(n)
	return b
}

func (b *budget) take(n int) bool {
	if b.left.Add(-int64(n)) < 0 {
		b.left.Add(int64(n))
		return false
	}
	return true
}

func (b *budget) give(n int) { b.left.Add(int64(n)) }

// HTTP/2 frame types and flags the tap reads (RFC 9113 §6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// tap watches the client→builder half of a spliced connection (HTTP/2,
// decrypted) for BuildKit Solve calls and reports each one's ref. It is
// passive: it sees the bytes after they are read and never changes,
// holds back or delays them beyond its own parsing, which is a push
// parser with no goroutine and no copy of frames it skips (a context
// transfer's DATA frames are counted past, not buffered).
//
// Any malformed input, a bound exceeded (the shared budget too) or a panic
// stops the tap for the rest of the connection (dead); the splice is not
// affected.
//
// One pump goroutine feeds it; release may be called from another, so mu
// guards all of it.
type tap struct {
	onSolve func(ref, label string) // label: the call's steps.LabelHeader, checked by steps.Label
	onStop  func(err error)         // called once when the tap gives up; may be nil
	mem     *budget                 // shared with the gateway's other taps
	mu      sync.Mutex

	charged  int // bytes taken from mem and not given back: the capacity of the buffers below
	dead     bool
	preface  int    // bytes of the client preface seen
	hdr      []byte // the current frame header, up to 9 bytes
	left     int    // payload bytes of the current frame still to come
	frame    frameHeader
	payload  []byte // payload kept for frames the tap reads (HEADERS, CONTINUATION, Solve DATA)
	keep     bool   // whether the current frame's payload is kept
	block    []byte // header block being assembled
	blockID  uint32 // its stream; 0 when none
	blockEnd bool   // the HEADERS frame of the block had END_STREAM
	dec      *hpack.Decoder
	fields   map[string]string // of the block being decoded, the ones the tap needs
	solves   map[uint32]*solveStream
	held     int // bytes (length) of solves' messages
}

type frameHeader struct {
	length int
	typ    byte
	flags  byte
	stream uint32
}

// solveStream is a Solve call whose request message is still arriving.
type solveStream struct {
	gzip  bool   // grpc-encoding: gzip
	label string // steps.LabelHeader, if it is a label
	msg   []byte // the gRPC message so far, with its 5-byte prefix
	scan  refScan
}

func newTap(mem *budget, onSolve func(ref, label string), onStop func(error)) *tap {
	t := &tap{onSolve: onSolve, onStop: onStop, mem: mem, solves: map[uint32]*solveStream{}}
	t.dec = hpack.NewDecoder(4096, t.field)
	// The encoder may resize its table up to what the builder allows;
	// accept any reasonable size rather than misread the stream.
	t.dec.SetAllowedMaxDynamicTableSize(1 << 20)
	t.dec.SetMaxStringLength(maxHeaderBlock)
	return t
}

// feed passes the next bytes the client sent.
func (t *tap) feed(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dead {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			t.stop(fmt.Errorf("tap panic: %v", r))
		}
	}()
	if err := t.parse(p); err != nil {
		t.stop(err)
	}
}

func (t *tap) stop(err error) {
	t.drop()
	if t.onStop != nil {
		t.onStop(err)
	}
}

// release ends the tap at its connection's end: what it holds goes back to
// the budget. It may be called more than once, and while feed runs.
func (t *tap) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.drop()
}

func (t *tap) drop() {
	t.dead = true
	t.hdr, t.payload, t.block, t.solves, t.held = nil, nil, nil, nil, 0
	t.give(t.charged)
}

var errBudget = errors.New("taps' memory budget exhausted")

// give returns n bytes of buffer capacity to the budget.
func (t *tap) give(n int) {
	t.charged -= n
	t.mem.give(n)
}

// grow appends p to buf, first taking from the budget the capacity it
// adds. The capacity doubles, but not past limit (when need is within it),
// so a buffer never holds much more than what it was meant for. On
// errBudget buf is returned unchanged.
func (t *tap) grow(buf, p []byte, limit int) ([]byte, error) {
	need := len(buf) + len(p)
	if need <= cap(buf) {
		return append(buf, p...), nil
	}
	c := max(need, min(max(2*cap(buf), 512), limit))
	if !t.mem.take(c - cap(buf)) {
		return buf, errBudget
	}
	t.charged += c - cap(buf) // buf's own capacity is now nb's
	nb := make([]byte, len(buf), c)
	copy(nb, buf)
	return append(nb, p...), nil
}

func (t *tap) parse(p []byte) error {
	if t.preface < len(clientPreface) {
		n := min(len(p), len(clientPreface)-t.preface)
		if string(p[:n]) != clientPreface[t.preface:t.preface+n] {
			return errors.New("not an HTTP/2 client connection")
		}
		t.preface += n
		p = p[n:]
	}
	for len(p) > 0 {
		if len(t.hdr) < 9 {
			n := min(len(p), 9-len(t.hdr))
			t.hdr = append(t.hdr, p[:n]...)
			p = p[n:]
			if len(t.hdr) < 9 {
				return nil
			}
			if err := t.begin(); err != nil {
				return err
			}
			if t.left == 0 {
				if err := t.end(); err != nil {
					return err
				}
				t.hdr = t.hdr[:0]
				continue
			}
		}
		n := min(len(p), t.left)
		if t.keep {
			var err error
			if t.payload, err = t.grow(t.payload, p[:n], t.frame.length); err != nil {
				return err
			}
		}
		t.left -= n
		p = p[n:]
		if t.left == 0 {
			if err := t.end(); err != nil {
				return err
			}
			t.hdr, t.payload = t.hdr[:0], t.shrink(t.payload)
		}
	}
	return nil
}

// begin reads a complete frame header and decides whether its payload is
// kept.
func (t *tap) begin() error {
	h := t.hdr
	t.frame = frameHeader{
		length: int(h[0])<<16 | int(h[1])<<8 | int(h[2]),
		typ:    h[3],
		flags:  h[4],
		stream: binary.BigEndian.Uint32(h[5:9]) & 0x7fffffff,
	}
	t.left = t.frame.length
	if t.blockID != 0 && t.frame.typ != frameContinuation {
		return errors.New("header block interrupted by another frame")
	}
	switch t.frame.typ {
	case frameHeaders, frameContinuation:
		t.keep = true
		if len(t.block)+t.frame.length > maxHeaderBlock {
			return fmt.Errorf("header block over %d bytes", maxHeaderBlock)
		}
	case frameData:
		t.keep = t.solves[t.frame.stream] != nil
	default:
		t.keep = false
	}
	return nil
}

// end handles a frame whose payload is complete.
func (t *tap) end() error {
	f := t.frame
	switch f.typ {
	case frameHeaders:
		frag, err := unpad(f, t.payload)
		if err != nil {
			return err
		}
		if f.flags&flagPriority != 0 {
			if len(frag) < 5 {
				return errors.New("HEADERS frame too short for its priority")
			}
			frag = frag[5:]
		}
		if t.block, err = t.grow(t.block[:0], frag, maxHeaderBlock); err != nil {
			return err
		}
		t.blockID, t.blockEnd = f.stream, f.flags&flagEndStream != 0
		if f.flags&flagEndHeaders != 0 {
			return t.headers()
		}
	case frameContinuation:
		if t.blockID == 0 || f.stream != t.blockID {
			return errors.New("CONTINUATION outside a header block")
		}
		var err error
		if t.block, err = t.grow(t.block, t.payload, maxHeaderBlock); err != nil {
			return err
		}
		if f.flags&flagEndHeaders != 0 {
			return t.headers()
		}
	case frameData:
		s := t.solves[f.stream]
		if s == nil {
			return nil
		}
		data, err := unpad(f, t.payload)
		if err != nil {
			return err
		}
		if len(s.msg)+len(data) > maxSolveMessage+5 || t.held+len(data) > maxSolveMessage {
			return fmt.Errorf("Solve request over %d bytes", maxSolveMessage)
		}
		limit := maxSolveMessage + 5
		if len(s.msg) >= 5 {
			limit = min(limit, 5+int(binary.BigEndian.Uint32(s.msg[1:5])))
		}
		if s.msg, err = t.grow(s.msg, data, limit); err != nil {
			return err
		}
		t.held += len(data)
		done, err := t.solveData(s)
		if done || err != nil || f.flags&flagEndStream != 0 {
			t.forget(f.stream)
		}
		if err != nil {
			return err
		}
	case frameRSTStream:
		t.forget(f.stream)
	}
	return nil
}

func (t *tap) forget(stream uint32) {
	if s := t.solves[stream]; s != nil {
		t.held -= len(s.msg)
		t.give(cap(s.msg))
		delete(t.solves, stream)
	}
}

// headers decodes a complete header block. Every block is decoded, in
// order, whatever its stream: HPACK's dynamic table depends on all of them.
func (t *tap) headers() error {
	stream, endStream := t.blockID, t.blockEnd
	t.blockID = 0
	t.fields = map[string]string{}
	if _, err := t.dec.Write(t.block); err != nil {
		return fmt.Errorf("header block: %w", err)
	}
	if err := t.dec.Close(); err != nil {
		return fmt.Errorf("header block: %w", err)
	}
	t.block = t.shrink(t.block)
	if t.fields[":path"] != solvePath || endStream {
		return nil
	}
	if len(t.solves) >= maxSolveStreams {
		return fmt.Errorf("over %d Solve calls waiting for their request", maxSolveStreams)
	}
	enc := t.fields["grpc-encoding"]
	if enc != "" && enc != "identity" && enc != "gzip" {
		return fmt.Errorf("Solve request encoding %q", enc)
	}
	t.solves[stream] = &solveStream{gzip: enc == "gzip", label: steps.Label(t.fields[steps.LabelHeader])}
	return nil
}

// field keeps the header fields the tap needs.
func (t *tap) field(f hpack.HeaderField) {
	switch f.Name {
	case ":path", "grpc-encoding", steps.LabelHeader:
		t.fields[f.Name] = f.Value
	}
}

// solveData looks for the ref in what has arrived of a Solve request.
// done is true once the stream needs no more data.
func (t *tap) solveData(s *solveStream) (done bool, err error) {
	if len(s.msg) < 5 {
		return false, nil
	}
	compressed := s.msg[0] == 1
	if s.msg[0] > 1 {
		return true, fmt.Errorf("gRPC message flag %d", s.msg[0])
	}
	size := int(binary.BigEndian.Uint32(s.msg[1:5]))
	if size > maxSolveMessage {
		return true, fmt.Errorf("Solve request of %d bytes", size)
	}
	body := s.msg[5:]
	if compressed {
		if !s.gzip {
			return true, errors.New("compressed Solve request without grpc-encoding")
		}
		if len(body) < size {
			return false, nil
		}
		if body, err = t.gunzip(body[:size]); err != nil {
			return true, err
		}
		defer t.give(cap(body))
	} else if len(body) > size {
		body = body[:size]
	}
	ref, found, err := s.scan.next(body)
	switch {
	case err != nil && len(body) < size && !compressed:
		return false, nil // truncated so far: wait for more
	case err != nil:
		return true, err
	case found:
		if steps.ValidSolveRef(ref) {
			t.onSolve(ref, s.label)
		}
		return true, nil
	}
	return len(body) >= size, nil
}

// refScan looks for a SolveRequest's ref (field 1) in a message that
// arrives a DATA frame at a time. It resumes where the last call stopped,
// so a message of many small fields costs its length once, not once per
// frame. (Go clients write the ref first, so it is usually found in the
// first frame.)
type refScan struct {
	off   int // bytes of complete fields (or group delimiters) scanned
	depth int // groups open at off: a field 1 inside one is not the ref
}

// next scans b, the message so far (from its start, a prefix of the same
// bytes as at the last call). err is set when the field at the resume
// point is cut off or malformed; a later call with more bytes retries it.
func (sc *refScan) next(b []byte) (ref string, found bool, err error) {
	for sc.off < len(b) {
		rest := b[sc.off:]
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return "", false, protowire.ParseError(n)
		}
		var m int
		switch {
		case typ == protowire.StartGroupType:
			sc.depth++
		case typ == protowire.EndGroupType:
			if sc.depth == 0 {
				return "", false, errors.New("end of a group never started")
			}
			sc.depth--
		case num == 1 && typ == protowire.BytesType && sc.depth == 0:
			v, m := protowire.ConsumeBytes(rest[n:])
			if m < 0 {
				return "", false, protowire.ParseError(m)
			}
			return string(v), true, nil
		default:
			if m = protowire.ConsumeFieldValue(num, typ, rest[n:]); m < 0 {
				return "", false, protowire.ParseError(m)
			}
		}
		sc.off += n + m
	}
	return "", false, nil
}

// gunzip inflates a compressed Solve request into a buffer taken from the
// budget; the caller gives back its capacity.
func (t *tap) gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("gzip Solve request: %w", err)
	}
	var out []byte
	chunk := make([]byte, 32<<10)
	for {
		n, rerr := zr.Read(chunk)
		if len(out)+n > maxSolveMessage {
			t.give(cap(out))
			return nil, fmt.Errorf("Solve request over %d bytes uncompressed", maxSolveMessage)
		}
		if out, err = t.grow(out, chunk[:n], maxSolveMessage); err != nil {
			t.give(cap(out))
			return nil, err
		}
		if rerr == io.EOF {
			return out, nil
		}
		if rerr != nil {
			t.give(cap(out))
			return nil, fmt.Errorf("gzip Solve request: %w", rerr)
		}
	}
}

// shrink empties a frame or header block buffer for the next one, giving
// back a large one's capacity (a big frame seen once is not held for the
// connection's life).
func (t *tap) shrink(buf []byte) []byte {
	if cap(buf) > keepBuffer {
		t.give(cap(buf))
		return nil
	}
	return buf[:0]
}

// unpad strips a PADDED frame's padding.
func unpad(f frameHeader, p []byte) ([]byte, error) {
	if f.flags&flagPadded == 0 {
		return p, nil
	}
	if len(p) < 1 || int(p[0]) >= len(p) {
		return nil, errors.New("bad padding")
	}
	return p[1 : len(p)-int(p[0])], nil
}

// tapReader feeds what the client sends to a tap as it is read.
type tapReader struct {
	r io.Reader
	t *tap
}

func (r tapReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.feed(p[:n])
	}
	if err != nil {
		r.t.release() // the connection's end
	}
	return n, err
}
