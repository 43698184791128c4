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
