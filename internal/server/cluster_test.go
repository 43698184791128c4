package server

import (
	"strings"
	"testing"
)

// A replica's own URL must be given, and be https unless on loopback:
// replicas' calls carry their bearer, and answers carry builders' keys.
func TestCheckAdvertiseURL(t *testing.T) {
	for raw, want := range map[string]string{
		"":                          "--advertise-url",
		"http://10.0.0.5:7420":      "use https://",
		"http://kiln-1.internal":    "use https://",
		"://bad":                    "--advertise-url",
		"https://kiln-1.internal":   "",
		"https://10.0.0.5:7420":     "",
		"http://127.0.0.1:7420":     "",
		"http://[::1]:7420":         "",
		"http://127.0.0.1.nip.io:1": "use https://",
	} {
		err := checkAdvertiseURL(raw)
		switch {
		case want == "" && err != nil:
			t.Errorf("%q refused: %v", raw, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: %v; want an error saying %q", raw, err, want)
		}
	}
}
