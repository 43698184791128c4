package retention

import (
	"testing"
	"time"
)

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]time.Duration{"14d": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "0": 0, " 1.5d ": 36 * time.Hour} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1d", "x", "-5h", "4000d", "99999h"} {
		if got, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", in, got)
		}
	}
	for d, want := range map[time.Duration]string{14 * 24 * time.Hour: "14d", 36 * time.Hour: "36h0m0s", 0: "0s"} {
		if got := Format(d); got != want {
			t.Errorf("Format(%v) = %q, want %q", d, got, want)
		}
	}
}
