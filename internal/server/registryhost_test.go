package server

import (
	"slices"
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

func TestWithOwnRegistry(t *testing.T) {
	cases := []struct {
		publicURL, addr string
		want            []string
	}{
		{"", "127.0.0.1:7420", []string{"r.local:5000", "127.0.0.1:7420"}},
		{"", "localhost:7420", []string{"r.local:5000", "localhost:7420"}},
		{"", ":7420", []string{"r.local:5000", "127.0.0.1:7420"}}, // reached at 127.0.0.1
		{"", "127.0.0.1:0", []string{"r.local:5000"}},             // port unknown yet
		{"", "10.0.0.5:7420", []string{"r.local:5000"}},           // not loopback: --insecure-registry
		{"", "[::1]:7420", []string{"r.local:5000"}},              // BuildKit cannot name it
		{"http://127.0.0.1:9000", "0.0.0.0:7420", []string{"r.local:5000", "127.0.0.1:9000"}},
		{"http://localhost", "127.0.0.1:80", []string{"r.local:5000", "localhost"}},
		{"https://127.0.0.1:7420", "127.0.0.1:7420", []string{"r.local:5000"}}, // TLS: not insecure
		{"http://kiln.example.com", "127.0.0.1:7420", []string{"r.local:5000"}},
	}
	for _, c := range cases {
		in := []string{"r.local:5000"}
		if got := withOwnRegistry(in, c.publicURL, c.addr); !slices.Equal(got, c.want) {
			t.Errorf("withOwnRegistry(%q, %q) = %q, want %q", c.publicURL, c.addr, got, c.want)
		}
		if len(in) != 1 {
			t.Errorf("input slice changed")
		}
	}
	if got := withOwnRegistry([]string{"127.0.0.1:7420"}, "", "127.0.0.1:7420"); len(got) != 1 {
		t.Errorf("added twice: %q", got)
	}
}
