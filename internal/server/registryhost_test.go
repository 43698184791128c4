package server

import (
	"testing"
)

func TestRegistryHostFor(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:7420":          "127.0.0.1:7420",
		"https://kiln.example.com":       "kiln.example.com",
		"https://kiln.example.com/kiln":  "kiln.example.com",
		"http://kiln.example.com:8080/x": "kiln.example.com:8080",
		"http://:7420":                   "127.0.0.1:7420",
		"http://0.0.0.0:7420":            "127.0.0.1:7420",
		"http://[::]:7420":               "127.0.0.1:7420",
		"http://[::1]:7420":              "[::1]:7420",
		"http://localhost":               "localhost",
	} {
		if got := registryHostFor(in); got != want {
			t.Errorf("registryHostFor(%q) = %q, want %q", in, got, want)
		}
	}
}

// Builds reach the gateway at the public URL's host and port, the scheme's
// port when it names none, and 127.0.0.1 for a server bound to every
// interface.
func TestGatewayAddr(t *testing.T) {
	for _, c := range []struct{ public, addr, want string }{
		{"", "127.0.0.1:7420", "tcp://127.0.0.1:7420"},
		{"", "0.0.0.0:7420", "tcp://127.0.0.1:7420"},
		{"https://kiln.example.com", "0.0.0.0:443", "tcp://kiln.example.com:443"},
		{"http://kiln.example.com/kiln", "0.0.0.0:80", "tcp://kiln.example.com:80"},
		{"https://kiln.example.com:8443/x", "0.0.0.0:7420", "tcp://kiln.example.com:8443"},
		{"https://[::1]", "[::1]:443", "tcp://[::1]:443"},
	} {
		s := &Server{cfg: Config{PublicURL: c.public, Addr: c.addr}}
		if got := s.gatewayAddr(); got != c.want {
			t.Errorf("public %q addr %q: gatewayAddr = %q, want %q", c.public, c.addr, got, c.want)
		}
	}
}
