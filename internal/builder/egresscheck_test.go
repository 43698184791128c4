package builder

import (
	"net/netip"
	"testing"
)

func TestPrivateDestination(t *testing.T) {
	mirror := []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("127.0.0.0/8")}
	for _, c := range []struct {
		addr    string
		allow   []netip.Prefix
		private bool
	}{
		{"127.0.0.1", nil, true},
		{"::1", nil, true},
		{"::ffff:127.0.0.1", nil, true},
		{"169.254.169.254", nil, true},
		{"10.20.1.1", nil, true},
		{"10.20.1.1", mirror, false},
		{"127.0.0.1", mirror, true}, // loopback is never opened
		{"100.64.0.1", nil, true},
		{"192.168.1.1", nil, true},
		{"fd00::1", nil, true},
		{"1.1.1.1", nil, false},
		{"2606:4700::1111", nil, false},
	} {
		if got := PrivateDestination(netip.MustParseAddr(c.addr), c.allow); got != c.private {
			t.Errorf("PrivateDestination(%s, %v) = %v; want %v", c.addr, c.allow, got, c.private)
		}
	}
}
