package server

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// Keep-alive and read limits of the HTTP server (New).
const (
	// idleTimeout closes a keep-alive connection that sends no request for
	// this long (HTTP/1.1 between requests; HTTP/2 with no stream open).
	// kiln's clients send requests in bursts (a push, a build's calls), so
	// a connection idle longer is one its client forgot: buildkitd keeps
	// each push session's connections for 2 minutes and never reuses them.
	idleTimeout = 30 * time.Second
	// readHeaderTimeout bounds reading a request's headers. Bodies are
	// bounded by idleness in the guard (guard.go), not by a whole-request
	// ReadTimeout: that would cut long pushes, blob downloads and streams,
	// and on HTTP/1.1 net/http turns its expiry into a cancel of the
	// handler's context once the body is read.
	readHeaderTimeout = 10 * time.Second
)

// buildConns closes the connections a build's registry requests came on
// once the build ends. buildkitd makes a new HTTP transport for every push
// session (its resolver's credentials are per session), so after a
// `--save` build its connections to kiln's registry (4 per push, 6 for a
// source build) sit idle until its 2-minute idle timeout: 40 saved builds
// held ~160 connections in both processes. A connection is tagged with
// the build of the last request that came on it (Config.BuildRequest);
// when that build ends (ended) an idle one is closed at once and a busy one
// when its request is answered.
//
// Only HTTP/1.1 connections have idle states: an HTTP/2 connection is
// active from its start until it closes, and is left to idleTimeout. A
// connection that never carries a request (the client dialed it for a
// request another connection then took) is closed by readHeaderTimeout;
// one whose requests showed no credentials by the registry's 401
// (Connection: close).
type buildConns struct {
	mu    sync.Mutex
	conns map[net.Conn]*trackedConn // every connection the HTTP server holds
}

// trackedConn is one connection's entry; the connection's context carries
// it (connContext) so that a request can tag its connection.
type trackedConn struct {
	state http.ConnState
	build string // the build of the last build request on it; "" if none
	ended bool   // build has ended: close when idle
}

type trackedConnKey struct{}

func newBuildConns() *buildConns {
	return &buildConns{conns: map[net.Conn]*trackedConn{}}
}

// connContext is the HTTP server's ConnContext: it registers c.
func (b *buildConns) connContext(ctx context.Context, c net.Conn) context.Context {
	tc := &trackedConn{state: http.StateNew}
	b.mu.Lock()
	b.conns[c] = tc
	b.mu.Unlock()
	return context.WithValue(ctx, trackedConnKey{}, tc)
}

// connState is the HTTP server's ConnState: it follows c's state, closes
// it when it goes idle after its build ended, and forgets it when closed.
func (b *buildConns) connState(c net.Conn, state http.ConnState) {
	b.mu.Lock()
	tc, ok := b.conns[c]
	if !ok {
		b.mu.Unlock()
		return
	}
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(b.conns, c)
		b.mu.Unlock()
		return
	}
	tc.state = state
	closeNow := state == http.StateIdle && tc.ended
	b.mu.Unlock()
	if closeNow {
		c.Close()
	}
}

// request tags the connection of ctx (a request's context) with buildID.
func (b *buildConns) request(ctx context.Context, buildID string) {
	tc, ok := ctx.Value(trackedConnKey{}).(*trackedConn)
	if !ok {
		return
	}
	b.mu.Lock()
	if tc.build != buildID {
		tc.build, tc.ended = buildID, false
	}
	b.mu.Unlock()
}

// ended closes the idle connections last used for buildID and marks its
// busy ones to be closed when their requests are answered.
func (b *buildConns) ended(buildID string) {
	var idle []net.Conn
	b.mu.Lock()
	for c, tc := range b.conns {
		if tc.build != buildID {
			continue
		}
		tc.ended = true
		if tc.state == http.StateIdle {
			idle = append(idle, c)
		}
	}
	b.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// count is how many connections the HTTP server holds (tests).
func (b *buildConns) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}
