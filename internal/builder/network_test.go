package builder

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestNetworkNamesAndSubnets(t *testing.T) {
	n, err := Network{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if n.Pool != defaultPool || n.size() != 256 {
		t.Fatalf("defaults: %+v size %d", n, n.size())
	}
	if got := n.bridge(255); got != "k0ac800-255" || len(got) > 15 {
		t.Fatalf("bridge name %q", got)
	}
	if got := n.subnet(0).String(); got != "10.200.0.0/24" {
		t.Errorf("subnet 0 = %s", got)
	}
	if got := n.subnet(255).String(); got != "10.200.255.0/24" {
		t.Errorf("subnet 255 = %s", got)
	}
	n2, _ := Network{Pool: netip.MustParsePrefix("10.128.16.0/20")}.withDefaults()
	if n2.size() != 16 || n2.subnet(15).String() != "10.128.31.0/24" {
		t.Errorf("/20 pool: size %d, last %s", n2.size(), n2.subnet(15))
	}
	// Pools of two kiln processes never share bridge names or chains.
	if n.bridgeMatch() == n2.bridgeMatch() || n.egressChain() == n2.egressChain() || strings.HasPrefix(n2.bridge(1), strings.TrimSuffix(n.bridgeMatch(), "+")) {
		t.Errorf("names collide: %s %s", n.bridgeMatch(), n2.bridgeMatch())
	}
	for _, bad := range []string{"8.8.0.0/16", "10.0.0.0/25", "fd00::/64", "10.0.0.0/7"} {
		if _, err := (Network{Pool: netip.MustParsePrefix(bad)}).withDefaults(); err == nil {
			t.Errorf("pool %s accepted", bad)
		}
	}
}

// The policy, as iptables-restore reads it: allowed CIDRs and DNS pass
// before anything private, the host and cloud metadata are dropped.
func TestEgressRules(t *testing.T) {
	n, _ := Network{}.withDefaults()
	allow := netip.MustParsePrefix("10.199.7.0/24")
	rules := string(n.egressRules([]egressRule{{bridge: n.bridge(3), allow: []netip.Prefix{allow, netip.MustParsePrefix("fd00::/8")}}},
		[]netip.Addr{netip.MustParseAddr("10.255.255.53")}))
	lines := strings.Split(strings.TrimSpace(rules), "\n")
	if lines[0] != "*filter" || lines[len(lines)-1] != "COMMIT" {
		t.Fatalf("not an iptables-restore table:\n%s", rules)
	}
	idx := func(sub string) int {
		return slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, sub) })
	}
	allowAt := idx("-i " + n.bridge(3) + " -d 10.199.7.0/24 -j RETURN")
	dnsAt := idx("KILN-E-0ac800 -i k0ac800-+ -d 10.255.255.53/32 -p udp --dport 53 -j RETURN")
	privAt := idx("-d 10.0.0.0/8 -j DROP")
	metaAt := idx("-d 169.254.0.0/16 -j DROP")
	poolAt := idx("-d 10.200.0.0/16 -j DROP")
	hostAt := idx("-A KILN-I-0ac800 -i k0ac800-+ -j DROP")
	for name, at := range map[string]int{"allow": allowAt, "dns": dnsAt, "private": privAt, "metadata": metaAt, "pool": poolAt, "host": hostAt} {
		if at < 0 {
			t.Fatalf("no %s rule in:\n%s", name, rules)
		}
	}
	if allowAt > privAt || dnsAt > privAt {
		t.Errorf("allowed destinations must come before the drops:\n%s", rules)
	}
	if poolAt > allowAt {
		t.Errorf("no allow-list may open the builders' pool: its drop must come first:\n%s", rules)
	}
	if strings.Contains(rules, "fd00::") {
		t.Errorf("an IPv6 CIDR reached the IPv4 table:\n%s", rules)
	}
}

func TestResolvers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# c\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 1.1.1.1\nnameserver 10.0.0.2\nsearch x\n"), 0o600)
	got := resolvers(p)
	if len(got) != 2 || got[0].String() != "10.0.0.2" || got[1].String() != "1.1.1.1" {
		t.Fatalf("resolvers %v", got)
	}
}

// A builder's environment holds PATH, HOME, TMPDIR and what the operator
// named, never the rest of kiln's (cloud credentials above all).
func TestBuildkitdEnvAllowList(t *testing.T) {
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
	t.Setenv("KILN_TOKEN", "kiln_org_x")
	t.Setenv("HTTPS_PROXY", "http://proxy:3128")
	t.Setenv("ALL_PROXY", "http://proxy:3128") // the fetch proxy's place: not the operator's
	env := buildkitdEnv("/opt/kiln/bin", "/b", "/b/tmp", "http://127.0.0.1:4711", []string{"HTTPS_PROXY", "PATH", "UNSET_VAR", "ALL_PROXY"})
	want := []string{"PATH=/opt/kiln/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/b", "TMPDIR=/b/tmp", "AWS_EC2_METADATA_DISABLED=true",
		"ALL_PROXY=http://127.0.0.1:4711", "all_proxy=http://127.0.0.1:4711", "HTTPS_PROXY=http://proxy:3128"}
	if !slices.Equal(env, want) {
		t.Fatalf("env %q, want %q", env, want)
	}
}

// A second kiln process cannot take a pool the first holds.
func TestClaimPool(t *testing.T) {
	n, _ := Network{Pool: netip.MustParsePrefix("10.61.240.0/20")}.withDefaults()
	release, err := n.claim()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.claim(); err == nil || !strings.Contains(err.Error(), "in use by another kiln process") {
		t.Fatalf("second claim: %v", err)
	}
	release()
	release2, err := n.claim()
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	release2()
}

// A killed kiln serve leaves its builders' bridges; the next holder of
// the pool removes them, and nobody else's.
func TestStaleBridgesRemoved(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to make bridges (run as root)")
	}
	n, _ := Network{Pool: netip.MustParsePrefix("10.62.240.0/20")}.withDefaults()
	other, _ := Network{Pool: netip.MustParsePrefix("10.62.224.0/20")}.withDefaults()
	release, err := n.claim()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for _, b := range []string{n.bridge(3), other.bridge(3)} {
		if out, err := exec.Command("ip", "link", "add", b, "type", "bridge").CombinedOutput(); err != nil {
			t.Fatalf("ip link add %s: %v: %s", b, err, out)
		}
		defer exec.Command("ip", "link", "delete", b).Run()
	}
	if got := n.removeStaleBridges(); !slices.Equal(got, []string{n.bridge(3)}) {
		t.Fatalf("removed %q, want only %q", got, n.bridge(3))
	}
	if _, err := net.InterfaceByName(n.bridge(3)); err == nil {
		t.Errorf("%s is still there", n.bridge(3))
	}
	if _, err := net.InterfaceByName(other.bridge(3)); err != nil {
		t.Errorf("another pool's bridge was removed: %v", err)
	}
}

func TestShellFields(t *testing.T) {
	got := shellFields(`-i k0a-1 ! -o k0a-1 -m comment --comment "CNI firewall plugin rules" -j DROP`)
	want := []string{"-i", "k0a-1", "!", "-o", "k0a-1", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j", "DROP"}
	if !slices.Equal(got, want) {
		t.Fatalf("%q", got)
	}
}
