package project

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
)

// MaxEgressAllow bounds one project's egress allow-list: each entry
// becomes firewall rules on the project's builders.
const MaxEgressAllow = 32

// neverAllowed are ranges no allow-list entry may touch: a RUN step's
// loopback is its own; link-local holds the cloud metadata endpoint
// 169.254.169.254 and the host's neighbours, and the few metadata
// endpoints outside it (AWS's and GCP's IPv6 ones, Alibaba's in CGNAT
// space) are listed too, so that an entry like fd00::/8 cannot open them.
// "This network", multicast and the unspecified addresses are no
// destination at all.
var neverAllowed = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (0.0.0.0/8)`},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local and cloud metadata (169.254.0.0/16)"},
	{netip.MustParsePrefix("100.100.100.200/32"), "a cloud metadata endpoint (100.100.100.200)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("::/128"), "the unspecified address (::)"},
	{netip.MustParsePrefix("::1/128"), "loopback (::1)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "a cloud metadata endpoint (fd00:ec2::254)"},
	{netip.MustParsePrefix("fd20:ce::254/128"), "a cloud metadata endpoint (fd20:ce::254)"},
}

// NormalizeEgressAllow checks an egress allow-list and returns it in
// stored form: canonical CIDRs in the order given, duplicates dropped.
//
// Every entry must be a CIDR ("10.9.0.0/16", "fd00:9::/64"; a bare
// address is not accepted, write "/32" or "/128") with no bits set past
// its prefix length: "10.9.1.0/16" is refused with the masked form
// suggested, since silently widening or narrowing what an operator typed
// into a firewall is worse than asking. The whole internet (0.0.0.0/0,
// ::/0) is refused because public destinations are reachable anyway: the
// list exists to open private mirrors. Entries touching loopback,
// link-local (cloud metadata), multicast or "this network" are refused:
// no entry can open those. IPv4-mapped IPv6 entries must be written as
// IPv4.
func NormalizeEgressAllow(cidrs []string) ([]string, error) {
	if len(cidrs) > MaxEgressAllow {
		return nil, invalidf("%d egress CIDRs: at most %d are allowed (use wider prefixes)", len(cidrs), MaxEgressAllow)
	}
	out := make([]string, 0, len(cidrs))
	for _, raw := range cidrs {
		c := strings.TrimSpace(raw)
		if c == "" {
			return nil, invalidf("empty egress CIDR (to clear the list, send none)")
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			if _, aerr := netip.ParseAddr(c); aerr == nil {
				bits := "32"
				if strings.Contains(c, ":") {
					bits = "128"
				}
				return nil, invalidf("egress CIDR %q has no prefix length: write %s/%s for one address", truncInput(c), c, bits)
			}
			return nil, invalidf("egress CIDR %q: want an address and a prefix length, like 10.9.0.0/16 or fd00:9::/64", truncInput(c))
		}
		if p.Addr().Is4In6() {
			return nil, invalidf("egress CIDR %q is an IPv4-mapped IPv6 prefix: write it as IPv4", c)
		}
		if p.Bits() == 0 {
			return nil, invalidf("egress CIDR %q would allow every destination: public addresses are reachable without an entry; list only the private ranges builds need (a mirror, a registry)", c)
		}
		if m := p.Masked(); m != p {
			return nil, invalidf("egress CIDR %q has host bits set: did you mean %s?", c, m)
		}
		for _, n := range neverAllowed {
			if p.Overlaps(n.prefix) {
				return nil, invalidf("egress CIDR %q overlaps %s, which builds may never reach", c, n.what)
			}
		}
		if s := p.String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// EgressAllow returns the project's egress allow-list. Anyone who may see
// the project may read it.
func (s *Service) EgressAllow(ctx context.Context, p auth.Principal, projectID string) (Project, error) {
	return s.Get(ctx, p, projectID)
}

// SetEgressAllow replaces the CIDRs the project's RUN steps may reach
// beyond public destinations (see NormalizeEgressAllow); an empty list
// clears it. It is the operator's decision: organization tokens only.
// The change is audited (audit.KindProjectEgressChanged) and handed to
// the project's running builders (Network); builders starting later read
// it from the project (internal/build turns it into their spec).
func (s *Service) SetEgressAllow(ctx context.Context, p auth.Principal, projectID string, cidrs []string) (Project, error) {
	proj, err := s.admin(ctx, p, projectID, "changing a project's egress allow-list")
	if err != nil {
		return Project{}, err
	}
	norm, err := NormalizeEgressAllow(cidrs)
	if err != nil {
		return Project{}, err
	}
	if err := s.Store.SetProjectEgressAllow(ctx, proj.ID, norm); err != nil {
		return Project{}, err
	}
	previous := proj.EgressAllow
	proj.EgressAllow = norm
	if s.Network != nil {
		// Stored first: a builder starting now reads the new list anyway.
		if err := s.Network.SetEgressAllow(proj.ID, norm); err != nil {
			return Project{}, fmt.Errorf("allow-list saved, but applying it to the running builders failed (it applies at their next start): %w", err)
		}
	}
	s.Audit.Record(ctx, audit.Event{Kind: audit.KindProjectEgressChanged, OrgID: proj.OrgID, ProjectID: proj.ID, Actor: p.TokenID,
		Detail: map[string]string{
			"egress_allow": strings.Join(norm, ","),
			"previous":     strings.Join(previous, ","),
			"entries":      strconv.Itoa(len(norm)),
		}})
	return proj, nil
}
