package gateway_test

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	controlapi "github.com/moby/buildkit/api/services/control"
	pb "github.com/moby/buildkit/solver/pb"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/steps"
)

// control is a fake buildkitd: Solve records the refs it was asked for.
type control struct {
	controlapi.UnimplementedControlServer
	mu   sync.Mutex
	refs []string
	defs []int // size of each request's definition
}

func (c *control) Solve(ctx context.Context, req *controlapi.SolveRequest) (*controlapi.SolveResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refs = append(c.refs, req.Ref)
	n := 0
	if req.Definition != nil {
		for _, d := range req.Definition.Def {
			n += len(d)
		}
	}
	c.defs = append(c.defs, n)
	return &controlapi.SolveResponse{}, nil
}

func (c *control) ListWorkers(ctx context.Context, req *controlapi.ListWorkersRequest) (*controlapi.ListWorkersResponse, error) {
	return &controlapi.ListWorkersResponse{}, nil
}

// tapped starts a fake buildkitd and a proxy in front of it whose
// client→server half goes through a tap; it returns a client of the proxy
// and the refs the tap reported.
func tapped(t *testing.T, srv *control) (controlapi.ControlClient, func() []string, func() []error) {
	t.Helper()
	gs := grpc.NewServer()
	controlapi.RegisterControlServer(gs, srv)
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(bl)
	t.Cleanup(gs.Stop)

	var mu sync.Mutex
	var refs []string
	var stops []error
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pl.Close() })
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", bl.Addr().String())
			if err != nil {
				c.Close()
				return
			}
			src := gateway.NewTapReader(c, func(ref, label string) {
				mu.Lock()
				if label != "" {
					ref += "@" + label
				}
				refs = append(refs, ref)
				mu.Unlock()
			}, func(err error) {
				mu.Lock()
				stops = append(stops, err)
				mu.Unlock()
			})
			go func() { gateway.Pump(b, src); b.Close() }()
			go func() { gateway.Pump(c, b); c.Close() }()
		}
	}()
	cc, err := grpc.NewClient(pl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	get := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), refs...) }
	getStops := func() []error { mu.Lock(); defer mu.Unlock(); return append([]error(nil), stops...) }
	return controlapi.NewControlClient(cc), get, getStops
}

func TestTapReportsSolveRefs(t *testing.T) {
	srv := &control{}
	c, refs, stops := tapped(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Many calls with varying metadata exercise HPACK's dynamic table,
	// which the tap must follow across streams it does not care about.
	big := bytes.Repeat([]byte("x"), 3<<20) // many DATA frames
	calls := []struct {
		ref, label string // label: sent as steps.LabelHeader
		want       string // what the tap reports: ref[@label]
		def        []byte
		opts       []grpc.CallOption
	}{
		{ref: "refplain", want: "refplain", def: []byte("def")},
		{ref: "refbig", label: "app", want: "refbig@app", def: big},
		{ref: "refgzip", want: "refgzip", def: big, opts: []grpc.CallOption{grpc.UseCompressor(gzip.Name)}},
		{ref: "refoddlabel", label: "a b;c", want: "refoddlabel"}, // not a label: ignored
		// From the attacker's side: refs not of BuildKit's form reach the
		// builder untouched but are not reported (want "").
		{ref: strings.Repeat("r", 1<<20)},
		{ref: "ref\nlevel=ERROR msg=forged"},
		{ref: "Ref-Upper"},
		{ref: "k2l5wq0ldmxa8x7x6ab4sp3lo", want: "k2l5wq0ldmxa8x7x6ab4sp3lo"}, // identity.NewID's form
		{ref: "reflast", label: "worker", want: "reflast@worker"},
	}
	var want, sent []string
	for i, call := range calls {
		mctx := metadata.AppendToOutgoingContext(ctx, "x-call", strings.Repeat("m", i*100), "x-same", "same")
		if call.label != "" {
			mctx = metadata.AppendToOutgoingContext(mctx, steps.LabelHeader, call.label)
		}
		if _, err := c.ListWorkers(mctx, &controlapi.ListWorkersRequest{}); err != nil {
			t.Fatal(err)
		}
		req := &controlapi.SolveRequest{Ref: call.ref, Frontend: "dockerfile.v0"}
		if call.def != nil {
			req.Definition = &pb.Definition{Def: [][]byte{call.def}}
		}
		if _, err := c.Solve(mctx, req, call.opts...); err != nil {
			t.Fatalf("Solve through the tap: %v", err)
		}
		if call.want != "" {
			want = append(want, call.want)
		}
		sent = append(sent, call.ref)
	}
	if got := refs(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("tap reported %q, want %q (stops: %v)", got, want, stops())
	}
	if got := strings.Join(srv.refs, ","); got != strings.Join(sent, ",") {
		t.Fatalf("builder got %q: the splice changed the requests", got)
	}
	if srv.defs[1] != len(big) || srv.defs[2] != len(big) {
		t.Fatalf("builder got definitions of %v bytes, want %d", srv.defs, len(big))
	}
	if s := stops(); len(s) != 0 {
		t.Fatalf("tap stopped: %v", s)
	}
}

// TestTapGarbage: whatever the client sends passes through unchanged; the
// tap gives up on what it cannot read, reports nothing, and never panics.
func TestTapGarbage(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	random := make([]byte, 1<<20)
	rnd.Read(random)
	preface := "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	cases := map[string][]byte{
		"random":              random,
		"preface then random": append([]byte(preface), random...),
		// A HEADERS frame with a block HPACK cannot decode.
		"bad hpack": append([]byte(preface), 0, 0, 4, 1, 4, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff),
		// A frame cut short: nothing to report, nothing to fail.
		"truncated": append([]byte(preface), 0, 0, 40, 1, 4, 0, 0, 0, 1, 0x83),
		// CONTINUATION with no HEADERS before it.
		"stray continuation": append([]byte(preface), 0, 0, 1, 9, 4, 0, 0, 0, 1, 0x82),
		// Padding longer than the frame.
		"bad padding": append([]byte(preface), 0, 0, 2, 1, 4|8, 0, 0, 0, 1, 9, 0x82),
		"empty":       nil,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			var reported []string
			stopped := 0
			r := gateway.NewTapReader(bytes.NewReader(in), func(ref, _ string) { reported = append(reported, ref) }, func(error) { stopped++ })
			var out bytes.Buffer
			// Small reads: frames split at every boundary.
			if err := gateway.Pump(&out, io.LimitReader(smallReads{r}, int64(len(in))+1)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), in) {
				t.Fatal("the tap changed the bytes passing through it")
			}
			if len(reported) != 0 || stopped > 1 {
				t.Fatalf("reported %q, stopped %d times", reported, stopped)
			}
			// Random bytes after a valid preface may read as one huge
			// frame of a type the tap skips: giving up is not required.
			if name != "truncated" && name != "empty" && name != "preface then random" && stopped != 1 {
				t.Fatalf("the tap did not give up on %s", name)
			}
		})
	}
}

// smallReads reads at most 7 bytes at a time.
type smallReads struct{ r io.Reader }

func (s smallReads) Read(p []byte) (int, error) {
	if len(p) > 7 {
		p = p[:7]
	}
	return s.r.Read(p)
}

// h2 writes a client's side of an HTTP/2 connection by hand, for what a
// real gRPC client would not send.
type h2 struct {
	bytes.Buffer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newH2() *h2 {
	c := &h2{}
	c.enc = hpack.NewEncoder(&c.hb)
	c.WriteString("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	return c
}

func (c *h2) frame(typ, flags byte, stream uint32, payload []byte) {
	n := len(payload)
	c.Write([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags, byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)})
	c.Write(payload)
}

// solve opens stream as a Solve call.
func (c *h2) solve(stream uint32) {
	c.hb.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/moby.buildkit.v1.Control/Solve"},
		{":authority", "builder"}, {"content-type", "application/grpc"}} {
		c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	c.frame(0x1, 0x4, stream, c.hb.Bytes()) // HEADERS, END_HEADERS
}

// message sends a gRPC message of declared size (≥ len(msg): the rest
// never comes) on stream in DATA frames of at most frame bytes.
func (c *h2) message(stream uint32, size int, msg []byte, frame int) {
	p := append([]byte{0, byte(size >> 24), byte(size >> 16), byte(size >> 8), byte(size)}, msg...)
	for len(p) > 0 {
		n := min(len(p), frame)
		c.frame(0x0, 0, stream, p[:n])
		p = p[n:]
	}
}

// From the attacker's side: a Solve request of many tiny fields, sent in
// small frames before its ref, costs the tap its length once, not once per
// frame (which made 8 MiB take minutes of one core).
func TestTapScansASolveRequestOnce(t *testing.T) {
	var msg []byte
	for len(msg) < 8<<20 {
		msg = protowire.AppendTag(msg, 15, protowire.VarintType)
		msg = protowire.AppendVarint(msg, 0)
	}
	msg = protowire.AppendString(protowire.AppendTag(msg, 1, protowire.BytesType), "k2l5wq0ldmxa8x7x6ab4sp3lo")
	c := newH2()
	c.solve(1)
	c.message(1, len(msg), msg, 16<<10)
	in := c.Bytes()

	var reported []string
	var stops []error
	r := gateway.NewTapReader(bytes.NewReader(in), func(ref, _ string) { reported = append(reported, ref) }, func(err error) { stops = append(stops, err) })
	start := time.Now()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, r); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the tap is still scanning an 8 MiB Solve request after 10s")
	}
	t.Logf("scanned in %v", time.Since(start))
	if len(reported) != 1 || reported[0] != "k2l5wq0ldmxa8x7x6ab4sp3lo" || len(stops) != 0 {
		t.Fatalf("reported %q, stopped %v; want the ref found after the small fields", reported, stops)
	}
}

// From the attacker's side: connections each holding a large Solve request
// whose ref never comes cannot make the taps hold more than their shared
// budget. The tap that would pass it stops; its bytes still pass through
// untouched, and what the taps held is given back at their connections'
// end.
func TestTapStopsAtTheSharedBudget(t *testing.T) {
	const size = 4 << 20
	mem := gateway.NewTapBudget(size)
	// A Solve request of declared size n, of which only its definition's
	// first bytes come.
	partial := func(n, sent int) []byte {
		msg := protowire.AppendTag(nil, 2, protowire.BytesType)
		msg = protowire.AppendVarint(msg, uint64(n))
		msg = append(msg, make([]byte, sent)...)
		c := newH2()
		c.solve(1)
		c.message(1, n+len(msg)-sent, msg, 16<<10)
		return c.Bytes()
	}
	type conn struct {
		r       io.Reader
		stopped []error
	}
	open := func(in []byte) *conn {
		c := &conn{}
		c.r = gateway.NewTapReaderIn(mem, bytes.NewReader(in), func(string, string) {}, func(err error) { c.stopped = append(c.stopped, err) })
		return c
	}

	inA := partial(3<<20, 5<<19) // 2.5 MiB of 3
	a := open(inA)
	if _, err := io.ReadFull(a.r, make([]byte, len(inA))); err != nil { // all of it, not its end
		t.Fatal(err)
	}
	if left := mem.Left(); left > size-5<<19 || len(a.stopped) != 0 {
		t.Fatalf("budget left %d, stops %v: the first request is not held", left, a.stopped)
	}

	inB := partial(2<<20, 2<<20)
	b := open(inB)
	var out bytes.Buffer
	if err := gateway.Pump(&out, b.r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), inB) {
		t.Fatal("the tap that ran out of budget changed the bytes passing through it")
	}
	if len(b.stopped) != 1 {
		t.Fatalf("a tap past the budget stopped %d times; want once", len(b.stopped))
	}
	if _, err := io.Copy(io.Discard, a.r); err != nil { // a's end
		t.Fatal(err)
	}
	if left := mem.Left(); left != size {
		t.Fatalf("budget left %d after every connection ended; want all %d back", left, size)
	}

	// The budget serves the next connection in full again.
	var reported []string
	c := newH2()
	c.solve(1)
	msg := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "k2l5wq0ldmxa8x7x6ab4sp3lo")
	msg = protowire.AppendBytes(protowire.AppendTag(msg, 2, protowire.BytesType), make([]byte, 3<<20))
	c.message(1, len(msg), msg, 16<<10)
	r := gateway.NewTapReaderIn(mem, bytes.NewReader(c.Bytes()), func(ref, _ string) { reported = append(reported, ref) }, nil)
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	if len(reported) != 1 || mem.Left() != size {
		t.Fatalf("reported %q, budget left %d", reported, mem.Left())
	}
}
