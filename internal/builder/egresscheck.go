package builder

import (
	"net"
	"net/netip"
	"slices"
)

// PrivateDestination reports whether a is a destination RUN steps do not
// reach by default (the ranges of the egress policy in network.go, and
// every address of this host) and allow does not open. It is for fetches
// that buildkitd makes itself, in the host's network rather than a step's
// (a source build's git context): the server checks their destination
// against the same policy before the builder fetches.
func PrivateDestination(a netip.Addr, allow []netip.Prefix) bool {
	a = a.Unmap()
	for _, p := range allow {
		if p.Contains(a) && !a.IsLoopback() {
			return false
		}
	}
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return true
	}
	for _, d := range denied {
		if netip.MustParsePrefix(d).Contains(a) {
			return true
		}
	}
	addrs, _ := net.InterfaceAddrs()
	return slices.ContainsFunc(addrs, func(n net.Addr) bool {
		ipn, ok := n.(*net.IPNet)
		if !ok {
			return false
		}
		own, ok := netip.AddrFromSlice(ipn.IP)
		return ok && own.Unmap() == a
	})
}
