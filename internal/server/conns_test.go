package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A client that keeps its connections (as buildkitd's per-session
// transports do) loses them when the build they served ends; a build
// still running keeps its own, and a busy connection is closed only once
// its answer is sent.
func TestBuildConnsCloseWhenTheBuildEnds(t *testing.T) {
	conns := newBuildConns()
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns.request(r.Context(), r.URL.Query().Get("build"))
		if r.URL.Query().Get("wait") != "" {
			<-release
		}
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnContext = conns.connContext
	srv.Config.ConnState = conns.connState
	srv.Start()
	defer srv.Close()

	// One client (one transport, its own connections) per build.
	get := func(c *http.Client, query string) {
		t.Helper()
		res, err := c.Get(srv.URL + "/?" + query)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	a := &http.Client{Transport: &http.Transport{}}
	b := &http.Client{Transport: &http.Transport{}}
	get(a, "build=A")
	get(b, "build=B")
	waitConns(t, conns, 2)

	conns.ended("A")
	waitConns(t, conns, 1) // B's is kept
	get(b, "build=B")
	waitConns(t, conns, 1) // and reused

	// A build's connection busy when the build ends is closed after its
	// answer, not during it.
	done := make(chan struct{})
	go func() { defer close(done); get(b, "build=B&wait=1") }()
	time.Sleep(100 * time.Millisecond)
	conns.ended("B")
	close(release)
	<-done
	waitConns(t, conns, 0)

	// A connection reused for a later build belongs to that build.
	c := &http.Client{Transport: &http.Transport{}}
	get(c, "build=C")
	get(c, "build=D")
	conns.ended("C")
	time.Sleep(50 * time.Millisecond)
	if n := conns.count(); n != 1 {
		t.Fatalf("ending C closed the connection D uses (%d connections)", n)
	}
}

func waitConns(t *testing.T, conns *buildConns, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for conns.count() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d open connections, want %d", conns.count(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
