package builder

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// origin is a server the tests fetch from, counting what reaches it.
func origin(t *testing.T, ln net.Listener) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, "origin says hi")
	}))
	if ln != nil {
		s.Listener.Close()
		s.Listener = ln
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &hits
}

func newFetchProxy(t *testing.T, allow []netip.Prefix, open bool) *fetchProxy {
	t.Helper()
	p, err := startFetchProxy(func() []netip.Prefix { return allow }, open, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// get fetches u through the proxy as a plain proxy request.
func get(t *testing.T, p *fetchProxy, u string) (int, string) {
	t.Helper()
	pu, _ := url.Parse(p.URL())
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	res, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s through the proxy: %v", u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// connect asks the proxy for a tunnel to hostport and returns its status.
func connect(t *testing.T, p *fetchProxy, hostport string) (int, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(p.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hostport, hostport)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", hostport, err)
	}
	return res.StatusCode, c, br
}

// Loopback, localhost and the host's own addresses are refused, by CONNECT
// and by plain requests, before anything reaches them; the allow-list
// opens a private address but never loopback.
func TestFetchProxyRefusesPrivateDestinations(t *testing.T) {
	o, hits := origin(t, nil)
	port := o.Listener.Addr().(*net.TCPAddr).Port
	p := newFetchProxy(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, false)

	for _, u := range []string{o.URL, fmt.Sprintf("http://localhost:%d/r.git", port)} {
		code, body := get(t, p, u)
		if code != buildreq.FetchRefusedStatus || !strings.Contains(body, "private address builds may not reach") {
			t.Errorf("GET %s: %d %q; want %d naming the policy", u, code, body, buildreq.FetchRefusedStatus)
		}
	}
	for _, hp := range []string{o.Listener.Addr().String(), fmt.Sprintf("localhost:%d", port), "169.254.169.254:80", "[::1]:443"} {
		if code, _, _ := connect(t, p, hp); code != buildreq.FetchRefusedStatus {
			t.Errorf("CONNECT %s: %d; want %d", hp, code, buildreq.FetchRefusedStatus)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the origin saw %d requests; refused fetches must not reach it", n)
	}

	// Not a proxy request at all: a clear 400.
	res, err := http.Get(p.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("a direct request: %d; want 400", res.StatusCode)
	}

	// An address of this host that is not loopback: refused, until the
	// project's allow-list opens it.
	own := ownAddress(t)
	if !own.IsValid() {
		t.Log("this machine has no non-loopback IPv4 address; the allow-list case was not run")
		return
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(own, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	o2, hits2 := origin(t, ln)
	if code, _ := get(t, newFetchProxy(t, nil, false), o2.URL); code != buildreq.FetchRefusedStatus || hits2.Load() != 0 {
		t.Errorf("GET %s (this host's address): %d, %d hits; want refused", o2.URL, code, hits2.Load())
	}
	if code, body := get(t, newFetchProxy(t, []netip.Prefix{netip.PrefixFrom(own, 32)}, false), o2.URL); code != http.StatusOK || body != "origin says hi" {
		t.Errorf("GET %s with %s/32 allowed: %d %q; want the origin's answer", o2.URL, own, code, body)
	}
}

func ownAddress(t *testing.T) netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				return ip.Unmap()
			}
		}
	}
	return netip.Addr{}
}

// With --git-private-hosts everything passes: plain requests are
// forwarded, CONNECT tunnels carry TLS end to end.
func TestFetchProxyForwardsWhenOpen(t *testing.T) {
	o, hits := origin(t, nil)
	p := newFetchProxy(t, nil, true)
	if code, body := get(t, p, o.URL+"/info/refs?service=git-upload-pack"); code != http.StatusOK || body != "origin says hi" {
		t.Errorf("GET: %d %q", code, body)
	}
	tlsOrigin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "over tls") }))
	defer tlsOrigin.Close()
	pu, _ := url.Parse(p.URL())
	tr := tlsOrigin.Client().Transport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyURL(pu)
	res, err := (&http.Client{Transport: tr}).Get(tlsOrigin.URL)
	if err != nil {
		t.Fatalf("https through the tunnel: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "over tls" {
		t.Errorf("https through the tunnel: %q", b)
	}
	if hits.Load() != 1 {
		t.Errorf("origin hits %d; want 1", hits.Load())
	}
}

// git and curl, as buildkitd runs them, take the proxy from ALL_PROXY,
// and the refusal reads as such in git's error (engine.gitError looks
// for it).
func TestFetchProxyReachedByGitThroughAllProxy(t *testing.T) {
	o, hits := origin(t, nil)
	p := newFetchProxy(t, nil, false)
	env := append(os.Environ(), "ALL_PROXY="+p.URL(), "GIT_TERMINAL_PROMPT=0", "HOME="+t.TempDir())
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"curl", []string{"-sS", "-o", "/dev/null", "-w", "%{http_code}", o.URL + "/"}, "421"},
		{"git", []string{"ls-remote", o.URL + "/org/app.git"}, "returned error: 421"},
		{"git", []string{"ls-remote", "https://" + o.Listener.Addr().String() + "/org/app.git"}, "response 421"},
	} {
		if _, err := exec.LookPath(c.name); err != nil {
			testenv.Missing(t, "%s not installed: run hack/setup.sh", c.name)
		}
		cmd := exec.Command(c.name, c.args...)
		cmd.Env = env
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%s %s: %q; want %q (the proxy's refusal)", c.name, strings.Join(c.args, " "), out, c.want)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the origin saw %d requests", n)
	}
}
