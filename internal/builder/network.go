package builder

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Build networks.
//
// BuildKit's default network mode with no CNI configuration is the host's
// network: a RUN step could then reach every loopback service, sniff the
// host's traffic and listen on its addresses. kiln instead runs each
// builder's RUN steps in BuildKit's bridge mode: a network namespace per
// step, attached by the standard CNI plugins (bridge, host-local, loopback,
// firewall) to a bridge of the builder's own, "k<pool>-<N>" with the N-th
// /24 of Network.Pool (<pool> is the pool's first three octets in hex, so
// kiln processes with different pools never share a name). No two builders
// share a bridge or a subnet.
//
// Bridge mode NATs steps to the world and filters nothing, so kiln adds an
// egress policy in the filter table (iptables, so the CNI firewall
// plugin's rules and kiln's live in one place):
//
//	KILN-I-<pool>  jumped to from INPUT: steps reach no address of the host
//	             itself (kiln's API, other daemons), except DNS to the
//	             host's resolvers when one of them is the host.
//	KILN-E-<pool>  jumped to from FORWARD and from CNI-ADMIN (the chain the
//	             firewall plugin reserves for administrators, evaluated
//	             before its own accepts): a project's allowed CIDRs pass;
//	             DNS to the resolvers in /etc/resolv.conf passes; then
//	             loopback, link-local (cloud metadata 169.254.169.254),
//	             RFC 1918, CGNAT, multicast and reserved ranges and the
//	             builders' pool are dropped. Public destinations pass.
//
// IPv6 is not routed for steps (the bridge has no IPv6 range); its
// link-local addresses are dropped at the host too. Both chains are
// rewritten whole, in one iptables-restore, before any builder starts and
// whenever a project's allow-list changes; Close removes them and the
// bridges.

// Network configures builders' build networks.
type Network struct {
	// Pool is where builders' /24 subnets come from; zero → 10.200.0.0/16
	// (256 builders). It must be private: it is denied to every step.
	Pool netip.Prefix
	// CNIBinDir holds the CNI plugins; "" → /usr/lib/cni (Debian's
	// containernetworking-plugins) or /opt/cni/bin, whichever has them.
	CNIBinDir string
	// Iptables and IptablesRestore are the commands used to apply the
	// policy; "" → "iptables" and "iptables-restore" on PATH.
	Iptables, IptablesRestore, Ip6tables string
	// ResolvConf is read for the resolvers steps may query; "" →
	// /etc/resolv.conf (what BuildKit copies into steps).
	ResolvConf string
}

// defaultPool is Network.Pool's default.
var defaultPool = netip.MustParsePrefix("10.200.0.0/16")

// denied are the destinations no step reaches unless its project allows
// them: "this" network, RFC 1918, CGNAT, loopback, link-local (cloud
// metadata), IETF protocol assignments, benchmarking, multicast and
// reserved.
var denied = []string{
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
	"224.0.0.0/4", "240.0.0.0/4",
}

// withDefaults fills in defaults and checks n.
func (n Network) withDefaults() (Network, error) {
	if !n.Pool.IsValid() {
		n.Pool = defaultPool
	}
	n.Pool = n.Pool.Masked()
	if !n.Pool.Addr().Is4() || n.Pool.Bits() > 24 || n.Pool.Bits() < 8 {
		return n, fmt.Errorf("build network pool %s: want an IPv4 prefix from /8 to /24: %w", n.Pool, errdefs.ErrInvalid)
	}
	if !n.Pool.Addr().IsPrivate() {
		return n, fmt.Errorf("build network pool %s: want a private (RFC 1918) range: %w", n.Pool, errdefs.ErrInvalid)
	}
	if n.CNIBinDir == "" {
		n.CNIBinDir = "/usr/lib/cni"
		for _, d := range []string{"/usr/lib/cni", "/opt/cni/bin"} {
			if _, err := os.Stat(filepath.Join(d, "bridge")); err == nil {
				n.CNIBinDir = d
				break
			}
		}
	}
	if n.Iptables == "" {
		n.Iptables = "iptables"
	}
	if n.IptablesRestore == "" {
		n.IptablesRestore = "iptables-restore"
	}
	if n.Ip6tables == "" {
		n.Ip6tables = "ip6tables"
	}
	if n.ResolvConf == "" {
		n.ResolvConf = "/etc/resolv.conf"
	}
	return n, nil
}

// tag names this pool's bridges and chains: its first three octets in hex.
func (n Network) tag() string {
	a := n.Pool.Addr().As4()
	return fmt.Sprintf("%02x%02x%02x", a[0], a[1], a[2])
}

// bridgeMatch matches every bridge of the pool in an iptables rule.
func (n Network) bridgeMatch() string { return "k" + n.tag() + "-+" }

func (n Network) egressChain() string { return "KILN-E-" + n.tag() }
func (n Network) inputChain() string  { return "KILN-I-" + n.tag() }

// size is how many builder networks the pool holds.
func (n Network) size() int { return 1 << (24 - n.Pool.Bits()) }

// bridge is the name of network i's bridge (at most 15 bytes, Linux's limit).
func (n Network) bridge(i int) string { return "k" + n.tag() + "-" + strconv.Itoa(i) }

// subnet is network i's /24.
func (n Network) subnet(i int) netip.Prefix {
	a := n.Pool.Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8
	v := base + uint32(i)<<8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
}

// checkCNI reports a missing plugin with what to do about it.
func (n Network) checkCNI() error {
	for _, p := range []string{"bridge", "host-local", "loopback", "firewall"} {
		if _, err := os.Stat(filepath.Join(n.CNIBinDir, p)); err != nil {
			return fmt.Errorf("CNI plugin %s not found in %s (apt-get install containernetworking-plugins, or run hack/setup.sh): %w",
				p, n.CNIBinDir, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

// claim makes the pool this process's: an exclusive lock on
// /run/kiln/pool-<tag>.lock, held until release, so a second kiln serve
// given the same --builder-subnets fails at start instead of sharing
// bridges and rewriting the first one's egress policy; and no address of
// the host inside the pool but on this pool's own bridges (a pool that
// overlaps another kiln's, or a network of the host, would be routed
// wrongly).
func (n Network) claim() (release func(), err error) {
	dir := "/run/kiln"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		dir = filepath.Join(os.TempDir(), "kiln")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	path := filepath.Join(dir, "pool-"+n.tag()+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("build network pool %s is in use by another kiln process (%s): give each kiln serve its own --builder-subnets: %w",
			n.Pool, path, errdefs.ErrFailedPrecondition)
	}
	ifaces, _ := net.Interfaces()
	own := strings.TrimSuffix(n.bridgeMatch(), "+")
	for _, ifc := range ifaces {
		if strings.HasPrefix(ifc.Name, own) {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if ok && n.Pool.Contains(ip.Unmap()) {
				f.Close()
				return nil, fmt.Errorf("build network pool %s overlaps %s on interface %s: choose other --builder-subnets: %w",
					n.Pool, ipn, ifc.Name, errdefs.ErrFailedPrecondition)
			}
		}
	}
	return func() { f.Close() }, nil
}

// removeStaleBridges deletes this pool's bridges that exist before any
// builder of this process started: a previous run that was killed (no
// shutdown ran) left them. Only the holder of the pool (claim) may call
// it. It returns their names.
func (n Network) removeStaleBridges() []string {
	ifaces, _ := net.Interfaces()
	own := strings.TrimSuffix(n.bridgeMatch(), "+")
	var removed []string
	for _, ifc := range ifaces {
		i, err := strconv.Atoi(strings.TrimPrefix(ifc.Name, own))
		if !strings.HasPrefix(ifc.Name, own) || err != nil || i < 0 || i >= n.size() {
			continue
		}
		if runCmd(nil, "ip", "link", "delete", ifc.Name) == nil {
			removed = append(removed, ifc.Name)
		}
		n.removeCNIRules(ifc.Name)
		n.releaseAddrs(i)
	}
	return removed
}

// netLocked gives b a build network if it has none: the lowest index no
// other builder holds. Caller holds f.mu.
func (f *Fleet) netLocked(b *builder) error {
	if b.net >= 0 {
		return nil
	}
	used := make([]bool, f.cfg.Network.size())
	for _, o := range f.builders {
		if o.net >= 0 && o.net < len(used) {
			used[o.net] = true
		}
	}
	i := slices.Index(used, false)
	if i < 0 {
		return fmt.Errorf("no free build network in %s for another builder (kiln serve --builder-subnets): %w", f.cfg.Network.Pool, errdefs.ErrExhausted)
	}
	b.net = i
	return nil
}

// releaseNet gives back network i of builder b, which stopped (idle, a
// cache reset, its project deleted), so that the pool bounds the builders
// running at once rather than every builder started since kiln serve did.
// Its bridge is deleted under egressMu, which a starting builder's
// applyEgress takes before buildkitd runs: a builder handed network i
// meanwhile never loses the bridge it uses. A builder started again in
// the meantime keeps its network.
func (f *Fleet) releaseNet(b *builder, i int) {
	n := f.cfg.Network
	f.egressMu.Lock()
	f.mu.Lock()
	if b.run != nil || b.net != i || f.closed {
		f.mu.Unlock()
		f.egressMu.Unlock()
		return
	}
	b.net = -1
	f.mu.Unlock()
	_ = runCmd(nil, "ip", "link", "delete", n.bridge(i)) // none if no step ran: fine
	n.removeCNIRules(n.bridge(i))
	n.releaseAddrs(i)
	f.egressMu.Unlock()
	f.applyEgressLogged() // its bridge leaves the policy
}

// egressRule is one builder's part of the policy.
type egressRule struct {
	bridge string
	allow  []netip.Prefix
}

// egressRules renders the iptables-restore input for the policy (see the
// comment at the top of this file).
func (n Network) egressRules(builders []egressRule, resolvers []netip.Addr) []byte {
	in, eg, all := n.inputChain(), n.egressChain(), n.bridgeMatch()
	var b bytes.Buffer
	dns := func(chain string) {
		for _, ns := range resolvers {
			for _, proto := range []string{"udp", "tcp"} {
				fmt.Fprintf(&b, "-A %s -i %s -d %s/32 -p %s --dport 53 -j RETURN\n", chain, all, ns, proto)
			}
		}
	}
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n:%s - [0:0]\n", eg, in)
	dns(in)
	fmt.Fprintf(&b, "-A %s -i %s -j DROP\n", in, all)
	// Other builders first: no allow-list opens the pool.
	fmt.Fprintf(&b, "-A %s -i %s -d %s -j DROP\n", eg, all, n.Pool)
	for _, r := range builders {
		for _, p := range r.allow {
			if p.Addr().Is4() {
				fmt.Fprintf(&b, "-A %s -i %s -d %s -j RETURN\n", eg, r.bridge, p)
			}
		}
	}
	dns(eg)
	for _, d := range denied {
		fmt.Fprintf(&b, "-A %s -i %s -d %s -j DROP\n", eg, all, d)
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// jumps are the rules that send traffic into the pool's chains: first in
// INPUT and FORWARD, and in CNI-ADMIN, which the CNI firewall plugin
// evaluates before accepting a step's traffic.
func (n Network) jumps() [][2]string {
	return [][2]string{{"INPUT", n.inputChain()}, {"FORWARD", n.egressChain()}, {"CNI-ADMIN", n.egressChain()}}
}

// resolvers are the IPv4 nameservers of a resolv.conf that are not
// loopback (BuildKit drops those from steps' resolv.conf).
func resolvers(path string) []netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || !a.Is4() || a.IsLoopback() || a.IsUnspecified() {
			continue
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// applyEgress writes the policy for every builder that has a network. It
// is called before a builder's first start (a failure then fails the
// start: no step runs unfiltered) and when an allow-list changes.
func (f *Fleet) applyEgress() error {
	f.mu.Lock()
	var rules []egressRule
	for _, b := range f.builders {
		if b.net >= 0 {
			rules = append(rules, egressRule{bridge: f.cfg.Network.bridge(b.net), allow: slices.Clone(b.spec.EgressAllow)})
		}
	}
	f.mu.Unlock()
	slices.SortFunc(rules, func(a, b egressRule) int { return strings.Compare(a.bridge, b.bridge) })

	n := f.cfg.Network
	f.egressMu.Lock()
	defer f.egressMu.Unlock()
	if err := runCmd(n.egressRules(rules, resolvers(n.ResolvConf)), n.IptablesRestore, "-w", "--noflush"); err != nil {
		return fmt.Errorf("egress policy: %w (is iptables installed? run hack/setup.sh): %w", err, errdefs.ErrUnavailable)
	}
	// CNI-ADMIN is created here if the firewall plugin has not run yet; it
	// uses an existing one.
	_ = runCmd(nil, n.Iptables, "-w", "-N", "CNI-ADMIN") // exists already: fine
	for _, j := range n.jumps() {
		if runCmd(nil, n.Iptables, "-w", "-C", j[0], "-j", j[1]) == nil {
			continue
		}
		if err := runCmd(nil, n.Iptables, "-w", "-I", j[0], "1", "-j", j[1]); err != nil {
			return fmt.Errorf("egress policy: jump from %s: %w: %w", j[0], err, errdefs.ErrUnavailable)
		}
	}
	// Steps have no IPv6 route, but the bridge's link-local address would
	// reach the host's IPv6 listeners.
	for _, chain := range []string{"INPUT", "FORWARD"} {
		if runCmd(nil, n.Ip6tables, "-w", "-C", chain, "-i", n.bridgeMatch(), "-j", "DROP") == nil {
			continue
		}
		if err := runCmd(nil, n.Ip6tables, "-w", "-I", chain, "1", "-i", n.bridgeMatch(), "-j", "DROP"); err != nil {
			f.log.Warn("could not drop builders' IPv6 traffic to the host", "err", err)
		}
	}
	return nil
}

// removeNetworks undoes applyEgress and deletes the bridges of builders
// this Fleet started; Close calls it once every builder has stopped.
func (f *Fleet) removeNetworks() {
	f.mu.Lock()
	var nets []int
	for _, b := range f.builders {
		if b.net >= 0 {
			nets = append(nets, b.net)
		}
	}
	f.mu.Unlock()
	n := f.cfg.Network
	f.egressMu.Lock()
	defer f.egressMu.Unlock()
	for _, j := range n.jumps() {
		for runCmd(nil, n.Iptables, "-w", "-D", j[0], "-j", j[1]) == nil {
		}
	}
	for _, c := range []string{n.egressChain(), n.inputChain()} {
		_ = runCmd(nil, n.Iptables, "-w", "-F", c)
		_ = runCmd(nil, n.Iptables, "-w", "-X", c)
	}
	for _, chain := range []string{"INPUT", "FORWARD"} {
		for runCmd(nil, n.Ip6tables, "-w", "-D", chain, "-i", n.bridgeMatch(), "-j", "DROP") == nil {
		}
	}
	for _, i := range nets {
		_ = runCmd(nil, "ip", "link", "delete", n.bridge(i))
		n.removeCNIRules(n.bridge(i))
		n.releaseAddrs(i)
	}
}

// removeCNIRules deletes what the CNI firewall plugin added for a bridge
// (its same-bridge isolation rules), which CNI itself never removes.
func (n Network) removeCNIRules(bridge string) {
	for _, chain := range []string{"CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"} {
		out, err := exec.Command(n.Iptables, "-w", "-S", chain).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			spec, ok := strings.CutPrefix(line, "-A "+chain+" ")
			if !ok || !strings.Contains(" "+spec+" ", " "+bridge+" ") {
				continue
			}
			args := append([]string{"-w", "-D", chain}, shellFields(spec)...)
			_ = runCmd(nil, n.Iptables, args...)
		}
	}
}

// shellFields splits an iptables -S rule, keeping quoted comments whole.
func shellFields(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, have = !quoted, true
		case r == ' ' && !quoted:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ipamDir is where the CNI host-local plugin records the addresses it
// handed out on BuildKit's network (named "buildkit" on every builder).
const ipamDir = "/var/lib/cni/networks/buildkit"

// releaseAddrs forgets the host-local reservations in network i's subnet.
// Only a builder that is not running calls it (a killed buildkitd never
// releases its steps' addresses), so none of them is in use.
func (n Network) releaseAddrs(i int) {
	sub := n.subnet(i)
	ents, err := os.ReadDir(ipamDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if a, err := netip.ParseAddr(e.Name()); err == nil && sub.Contains(a) {
			_ = os.Remove(filepath.Join(ipamDir, e.Name()))
		}
	}
}

// SetEgressAllow changes the private destinations a project's RUN steps may
// reach, on its running builders at once (and at their next starts).
func (f *Fleet) SetEgressAllow(projectID string, allow []netip.Prefix) error {
	f.mu.Lock()
	live := false
	for _, b := range f.builders {
		if b.projectID == projectID {
			b.spec.EgressAllow = slices.Clone(allow)
			live = live || b.net >= 0
		}
	}
	f.mu.Unlock()
	if !live {
		return nil
	}
	return f.applyEgress()
}

// applyEgressLogged is applyEgress for callers that cannot return its error.
func (f *Fleet) applyEgressLogged() {
	if err := f.applyEgress(); err != nil {
		f.log.Error("apply build network egress policy", "err", err)
	}
}

// runCmd runs a command with stdin, returning its output in the error.
func runCmd(stdin []byte, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
