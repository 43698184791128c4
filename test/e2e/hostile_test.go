package e2e

// A hostile tenant: project A's RUN steps run kiln-probe
// (testdata/hostile/probe), a small static program that sniffs every
// interface it can see, knocks on kiln, the host, cloud metadata and
// project B's builder network, and binds a port; meanwhile project B
// builds, saves and runs a source build with its own token. The test reads
// what the probe wrote (exported with -o type=local) and what the host
// sees, and names each isolation that failed. See RELIABILITY.md,
// "Hostile tenants".

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// builderPool is the server's build network pool (--builder-subnets, which
// startServer gives every server): every builder's bridge subnet is carved
// from it. The probes derive destinations from their own routes only
// inside it.
func (s *server) builderPool(t *testing.T) netip.Prefix {
	t.Helper()
	for i, a := range s.args {
		v, ok := strings.CutPrefix(a, "--builder-subnets=")
		if !ok && a == "--builder-subnets" && i+1 < len(s.args) {
			v, ok = s.args[i+1], true
		}
		if ok {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				t.Fatalf("--builder-subnets %q: %v", v, err)
			}
			return p
		}
	}
	t.Fatalf("the server was started without --builder-subnets: %v", s.args)
	return netip.Prefix{}
}

// isolatedPool is a random /20 of 172.16.0.0/12 for a server's builders
// (kiln serve --builder-subnets), apart from the 10.128.0.0/9 the harness
// draws from: these tests judge one server's isolation and must not see
// another run's servers (kiln serve also refuses a pool another kiln
// process holds; see TestHostileTwoServersOnePool). Tests running at once
// never draw the same pool; each holds its own until it ends.
func isolatedPool(t *testing.T) string {
	t.Helper()
	hostIPs, _ := hostAddrs(t)
	isolatedPools.Lock()
	defer isolatedPools.Unlock()
	for range 50 {
		b := make([]byte, 2)
		rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + b[0]%16, (b[1] % 16) * 16, 0}), 20)
		if !slices.ContainsFunc(hostIPs, p.Contains) && !isolatedPools.held[p] {
			isolatedPools.held[p] = true
			t.Cleanup(func() {
				isolatedPools.Lock()
				defer isolatedPools.Unlock()
				delete(isolatedPools.held, p)
			})
			return p.String()
		}
	}
	t.Fatal("no free /20 in 172.16.0.0/12")
	return ""
}

// isolatedPools are the pools isolatedPool handed to tests still running.
var isolatedPools = struct {
	sync.Mutex
	held map[netip.Prefix]bool
}{held: map[netip.Prefix]bool{}}

var (
	probeOnce sync.Once
	probePath string
	probeErr  error
)

// probeBinary compiles kiln-probe once per test binary (static, for the
// builders' native platform) next to the kiln binary under test.
func probeBinary(t *testing.T) []byte {
	t.Helper()
	probeOnce.Do(func() {
		probePath = filepath.Join(filepath.Dir(kilnBin), "kiln-probe")
		cmd := exec.Command("go", "build", "-trimpath", "-o", probePath, "./test/e2e/testdata/hostile/probe")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = fmt.Errorf("go build kiln-probe: %v\n%s", err, out)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	b, err := os.ReadFile(probePath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// probeContext is writeContext plus the probe as ./kiln-probe (0755).
func probeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := writeContext(t, files)
	if err := os.WriteFile(filepath.Join(dir, "kiln-probe"), probeBinary(t), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// execForm renders argv as a Dockerfile exec-form array, so that the
// process's command line is exactly argv (processesNamed finds it).
func execForm(argv ...string) string {
	b, _ := json.Marshal(argv)
	return string(b)
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// asyncKiln is a CLI run in the background.
type asyncKiln struct {
	done chan struct{}
	res  result
}

func (s *server) kilnAsync(t *testing.T, dir string, env []string, args ...string) *asyncKiln {
	a := &asyncKiln{done: make(chan struct{})}
	go func() { defer close(a.done); a.res = s.kiln(t, dir, env, args...) }()
	return a
}

func (a *asyncKiln) finished() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

func (a *asyncKiln) wait(t *testing.T, timeout time.Duration) result {
	t.Helper()
	select {
	case <-a.done:
		return a.res
	case <-time.After(timeout):
		t.Fatalf("kiln did not finish within %s", timeout)
		return result{}
	}
}

// waitProbe waits for the probe process with exactly this command line to
// run (its build may still be starting its builder), failing early if the
// build ends first.
func waitProbe(t *testing.T, cmdline []string, build *asyncKiln) int {
	t.Helper()
	want := strings.Join(cmdline, " ")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if pids := processesNamed(want); len(pids) == 1 {
			return pids[0]
		} else if len(pids) > 1 {
			t.Fatalf("%d processes run %q", len(pids), want)
		}
		if build.finished() {
			t.Fatalf("the build ended before its probe ran: %v\n%s", build.res.Err, tail(build.res.Stderr, 6000))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the probe %q did not start within 3m", want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probeCtl is the probe's control directory as the host reaches it
// through the process's root.
func probeCtl(pid int, name string) string {
	return filepath.Join("/proc", strconv.Itoa(pid), "root", "kiln-probe-ctl", name)
}

// stopProbe asks a running probe to finish (it polls for the file).
func stopProbe(pid int) {
	os.WriteFile(probeCtl(pid, "stop"), []byte("stop\n"), 0o644)
}

func netnsOf(t *testing.T, pid string) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join("/proc", pid, "ns", "net"))
	if err != nil {
		t.Fatalf("network namespace of %s: %v", pid, err)
	}
	return l
}

// stepNet is what the host learns of a RUN step's network by entering it.
type stepNet struct {
	IPs     []netip.Prefix // global IPv4 addresses
	Gateway netip.Addr
}

func stepNetwork(t *testing.T, pid int) stepNet {
	t.Helper()
	p := strconv.Itoa(pid)
	out, err := exec.Command("nsenter", "-t", p, "-n", "ip", "-j", "-4", "addr", "show", "scope", "global").Output()
	if err != nil {
		t.Fatalf("nsenter -t %s -n ip addr: %v", p, err)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	json.Unmarshal(out, &links)
	var n stepNet
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if ip, err := netip.ParseAddr(a.Local); err == nil {
				n.IPs = append(n.IPs, netip.PrefixFrom(ip, a.PrefixLen))
			}
		}
	}
	out, _ = exec.Command("nsenter", "-t", p, "-n", "ip", "-j", "-4", "route", "show", "default").Output()
	var routes []struct{ Gateway string }
	json.Unmarshal(out, &routes)
	if len(routes) > 0 {
		n.Gateway, _ = netip.ParseAddr(routes[0].Gateway)
	}
	return n
}

// tcpListening reads the LISTEN sockets of a network namespace from a
// /proc/…/net directory: port → socket inodes.
func tcpListening(netDir string) map[int][]string {
	out := map[int][]string{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(netDir, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fl := strings.Fields(line)
			if len(fl) < 10 || fl[3] != "0A" {
				continue
			}
			_, portHex, _ := strings.Cut(fl[1], ":")
			port, err := strconv.ParseInt(portHex, 16, 32)
			if err == nil {
				out[int(port)] = append(out[int(port)], fl[9])
			}
		}
	}
	return out
}

// tcpPortsOf lists the TCP ports process pid itself listens on.
func tcpPortsOf(pid int) []int {
	fds, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	mine := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name()))
		if inode, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			mine[strings.TrimSuffix(inode, "]")] = true
		}
	}
	var ports []int
	for port, inodes := range tcpListening(filepath.Join("/proc", strconv.Itoa(pid), "net")) {
		for _, in := range inodes {
			if mine[in] {
				ports = append(ports, port)
			}
		}
	}
	slices.Sort(ports)
	return ports
}

// hostAddrs lists the host's global addresses (every interface, private
// ranges and kiln's bridges included) and its interfaces' MACs.
func hostAddrs(t *testing.T) (ips []netip.Addr, macs map[string]string) {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	macs = map[string]string{}
	for _, ifc := range ifs {
		if len(ifc.HardwareAddr) > 0 {
			macs[ifc.HardwareAddr.String()] = ifc.Name
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err == nil && p.Addr().IsGlobalUnicast() {
				ips = append(ips, p.Addr())
			}
		}
	}
	return ips, macs
}

// probeTargets is targets.json for kiln-probe attack.
type probeTargets struct {
	TCP          []probeTarget `json:"tcp"`
	ICMP         []probeTarget `json:"icmp"`
	GatewayPorts []int         `json:"gateway_ports"`
	Paths        []string      `json:"paths"`
	EnvMarkers   []string      `json:"env_markers"`
	HostNetNS    string        `json:"host_netns"`
}

type probeTarget struct {
	Label string `json:"label"`
	Addr  string `json:"addr"`
}

// probeReport is what kiln-probe attack wrote (report.json).
type probeReport struct {
	NetNS      string `json:"netns"`
	OnHostNet  bool   `json:"on_host_network"`
	Interfaces []struct {
		Name  string   `json:"name"`
		MAC   string   `json:"mac"`
		Addrs []string `json:"addrs"`
	} `json:"interfaces"`
	Gateway string `json:"gateway"`
	InPool  bool   `json:"gateway_in_pool"`
	Probes  []struct {
		Kind, Label, Addr, Outcome string
		Ms                         int64
	} `json:"probes"`
	Listen   []string `json:"listen"`
	ProcTCP  []string `json:"proc_net_tcp"`
	ProcUnix []string `json:"proc_net_unix"`
	Env      []string `json:"env_hits"`
	Paths    []string `json:"paths_present"`
	Sniff    struct {
		Error   string         `json:"error"`
		Frames  int            `json:"frames"`
		Bytes   int64          `json:"bytes"`
		ByIface map[string]int `json:"by_ifindex"`
		Seconds float64        `json:"seconds"`
	} `json:"sniff"`
}

// capturedFrame is one frame of the probe's capture.bin.
type capturedFrame struct {
	ifindex int
	data    []byte
}

func readCapture(t *testing.T, path string) []capturedFrame {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the sniffer's capture: %v", err)
	}
	var out []capturedFrame
	for len(b) >= 12 {
		n := int(binary.BigEndian.Uint32(b[8:12]))
		if 12+n > len(b) {
			break
		}
		out = append(out, capturedFrame{ifindex: int(binary.BigEndian.Uint32(b[0:4])), data: b[12 : 12+n]})
		b = b[12+n:]
	}
	return out
}

var anyTokenRe = regexp.MustCompile(`kiln_(org|prj|bld|pul)_[0-9A-Za-z]{16,}`)

// excerpt shows where needle sits in a frame, with secrets cut short.
func excerpt(data []byte, at, n int) string {
	from, to := max(0, at-40), min(len(data), at+n+40)
	s := strings.ToValidUTF8(string(data[from:to]), ".")
	s = anyTokenRe.ReplaceAllStringFunc(s, func(tok string) string { return tok[:13] + "…" })
	return strconv.Quote(s)
}

// A tenant holding project A's token runs hostile RUN steps while
// project B builds, saves and runs a source build: A sees none of B's
// traffic, reaches neither kiln, the host, cloud metadata nor B's builder
// network, listens on nothing the host exposes, and finds no credential
// of kiln's.
func TestHostileNetwork(t *testing.T) {
	t.Parallel()
	nonce := randomHex(t, 6)
	canary := "kiln-canary-" + nonce
	s := startServerEnv(t, []string{"AWS_SECRET_ACCESS_KEY=" + canary, "AWS_ACCESS_KEY_ID=AKIA" + canary, "KILN_E2E_CANARY=" + canary},
		"--builder-subnets", isolatedPool(t))
	s.requireRegistry(t)
	projA := s.createProject(t, "hostile-a")
	projB := s.createProject(t, "hostile-b")
	tokA := strings.TrimSpace(s.mustKiln(t, t.TempDir(), "tokens", "create", "--project", projA, "--description", "attacker").Stdout)
	tokB := strings.TrimSpace(s.mustKiln(t, t.TempDir(), "tokens", "create", "--project", projB, "--description", "victim").Stdout)
	asA, asB := []string{"KILN_TOKEN=" + tokA}, []string{"KILN_TOKEN=" + tokB}
	_, kilnPortStr, _ := net.SplitHostPort(s.addr)
	kilnPort, _ := strconv.Atoi(kilnPortStr)
	hostNS := netnsOf(t, "self")
	pool := s.builderPool(t)

	// B's victim step: listens, and sends datagrams with B's token on its
	// own network until told to stop.
	_, vp, _ := net.SplitHostPort(freeAddr(t))
	victimMarker := "B-VICTIM-" + nonce
	victimCmd := []string{"/kiln-probe", "victim", "-nonce", nonce, "-listen", vp, "-secret", "/run/secrets/btoken",
		"-marker", victimMarker, "-pool", pool.String()}
	bDir := probeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nCOPY kiln-probe /kiln-probe\n" +
		"RUN --mount=type=secret,id=btoken " + execForm(victimCmd...) + "\n"})
	secretFile := filepath.Join(t.TempDir(), "btoken")
	os.WriteFile(secretFile, []byte(tokB), 0o600)
	victim := s.kilnAsync(t, bDir, asB, "build", "--project", projB, "--secret", "id=btoken,src="+secretFile, "--progress", "plain", ".")
	var attackPID, victimPID int
	var attack *asyncKiln
	t.Cleanup(func() { // stop the probes before the server goes
		for _, pid := range []int{attackPID, victimPID} {
			if pid != 0 {
				stopProbe(pid)
			}
		}
		for _, a := range []*asyncKiln{attack, victim} {
			if a != nil {
				select {
				case <-a.done:
				case <-time.After(30 * time.Second):
				}
			}
		}
	})
	victimPID = waitProbe(t, victimCmd, victim)
	bNet := stepNetwork(t, victimPID)
	bNS := netnsOf(t, strconv.Itoa(victimPID))
	vport, _ := strconv.Atoi(vp)
	if bNS != hostNS && pool.Contains(bNet.Gateway) {
		eventually(t, 10*time.Second, "B's victim to listen in its namespace", func() bool {
			return tcpListening(filepath.Join("/proc", strconv.Itoa(victimPID), "net"))[vport] != nil
		})
	}

	// What A will try to reach.
	hostIPs, hostMACs := hostAddrs(t)
	tg := probeTargets{
		GatewayPorts: []int{kilnPort},
		Paths:        []string{s.Data, filepath.Join(s.Data, "admin.token"), filepath.Join(s.Data, "kiln.db")},
		EnvMarkers:   []string{canary},
		HostNetNS:    hostNS,
		TCP: []probeTarget{
			{"kiln's API and builder gateway on the step's 127.0.0.1", "127.0.0.1:" + kilnPortStr},
			{"kiln's API and builder gateway on the step's ::1", "[::1]:" + kilnPortStr},
			{"cloud metadata (169.254.169.254:80)", "169.254.169.254:80"},
		},
		ICMP: []probeTarget{{"cloud metadata (169.254.169.254)", "169.254.169.254"}},
	}
	for _, ip := range hostIPs {
		tg.TCP = append(tg.TCP, probeTarget{"kiln's API port on the host's address " + ip.String(), net.JoinHostPort(ip.String(), kilnPortStr)})
		if ip.Is4() {
			tg.ICMP = append(tg.ICMP, probeTarget{"the host's address " + ip.String(), ip.String()})
		}
	}
	// B's addresses are targets only inside the pool: a B step wrongly on
	// the host's network would name the host's real gateway.
	for _, ip := range bNet.IPs {
		if !pool.Contains(ip.Addr()) {
			continue
		}
		tg.TCP = append(tg.TCP, probeTarget{"project B's RUN step listening in B's builder subnet", net.JoinHostPort(ip.Addr().String(), vp)})
		tg.ICMP = append(tg.ICMP, probeTarget{"project B's RUN step in B's builder subnet", ip.Addr().String()})
	}
	if pool.Contains(bNet.Gateway) {
		tg.TCP = append(tg.TCP, probeTarget{"project B's bridge gateway, kiln's port", net.JoinHostPort(bNet.Gateway.String(), kilnPortStr)})
		tg.ICMP = append(tg.ICMP, probeTarget{"project B's bridge gateway", bNet.Gateway.String()})
	}
	targets, _ := json.MarshalIndent(tg, "", "  ")

	// A's attack: one step sniffs, probes and listens until stopped.
	_, lp, _ := net.SplitHostPort(freeAddr(t))
	listenPort, _ := strconv.Atoi(lp)
	attackCmd := []string{"/kiln-probe", "attack", "-nonce", nonce, "-targets", "/targets.json", "-out", "/out",
		"-listen", lp, "-pool", pool.String()}
	aDir := probeContext(t, map[string]string{
		"targets.json": string(targets),
		"Dockerfile": baseStages + "FROM busybox AS attack\nCOPY kiln-probe targets.json /\n" +
			"RUN --network=none " + execForm("/kiln-probe", "ifaces", "-out", "/out/none-ifaces.json") + "\n" +
			"RUN " + execForm(attackCmd...) + "\n" +
			"FROM scratch\nCOPY --from=attack /out /\n",
	})
	outA := t.TempDir()
	attack = s.kilnAsync(t, aDir, asA, "build", "--project", projA, "-o", "type=local,dest="+outA, "--progress", "plain", ".")
	attackPID = waitProbe(t, attackCmd, attack)
	eventually(t, 30*time.Second, "A's sniffer to be ready", func() bool {
		_, err := os.Stat(probeCtl(attackPID, "ready"))
		return err == nil
	})
	aNS := netnsOf(t, strconv.Itoa(attackPID))

	// While A listens: the host's namespace must not have its port.
	aListens := tcpListening(filepath.Join("/proc", strconv.Itoa(attackPID), "net"))[listenPort] != nil
	hostListens := tcpListening("/proc/self/net")[listenPort]
	var hostDial error
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+lp, 2*time.Second); err == nil {
		c.Close()
	} else {
		hostDial = err
	}

	// B's own traffic while A sniffs: a --save build and a source build,
	// each with B's project token.
	saveMarker, sourceMarker := "B-SAVE-"+nonce, "B-SOURCE-"+nonce
	saveDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo " + saveMarker + " > /m\n"})
	saved := s.mustKilnEnv(t, saveDir, asB, "build", "--project", projB, "--save", "--progress", "plain", ".")
	saveID := buildIDOf(t, saved)
	src := s.createSource(t, tokB, &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_ProjectId{ProjectId: projB}},
		contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nCOPY marker.txt /\nRUN cat /marker.txt\n", "marker.txt": sourceMarker}))
	if w := s.watch(t, tokB, src.BuildId, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("B's source build: %v %s\n%s", w.last.Status, w.last.Error, tail(w.logs.String(), 3000))
	}

	// Builders' processes, seen from the host while they run.
	type builderProc struct {
		project string
		pid     int
		environ string
		ports   []int
	}
	var procs []builderProc
	for _, b := range s.builders(t) {
		if b.PID == 0 {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(b.PID), "environ"))
		if err != nil {
			t.Errorf("read buildkitd %d's environment: %v", b.PID, err)
		}
		procs = append(procs, builderProc{b.ProjectID, b.PID, string(env), tcpPortsOf(b.PID)})
	}

	stopProbe(attackPID)
	ra := attack.wait(t, 2*time.Minute)
	if ra.Err != nil {
		t.Fatalf("A's build: %v\n%s", ra.Err, tail(ra.Stderr, 6000))
	}
	stopProbe(victimPID)
	rb := victim.wait(t, 2*time.Minute)
	if rb.Err != nil {
		t.Fatalf("B's victim build: %v\n%s", rb.Err, tail(rb.Stderr, 6000))
	}
	var rep probeReport
	if b, err := os.ReadFile(filepath.Join(outA, "report.json")); err != nil {
		t.Fatalf("the probe's report: %v", err)
	} else if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("the probe's report: %v\n%s", err, b)
	}
	t.Logf("A's step: netns %s, interfaces %+v, gateway %s; sniffed %d frames (%d bytes) in %.0fs by ifindex %v",
		rep.NetNS, rep.Interfaces, rep.Gateway, rep.Sniff.Frames, rep.Sniff.Bytes, rep.Sniff.Seconds, rep.Sniff.ByIface)

	t.Run("private network namespace", func(t *testing.T) {
		if aNS == hostNS || rep.NetNS == hostNS {
			t.Errorf("ISOLATION: project A's RUN step runs in the host's network namespace (%s)", hostNS)
		}
		if bNS == hostNS {
			t.Errorf("ISOLATION: project B's RUN step runs in the host's network namespace (%s)", hostNS)
		}
		if aNS == bNS {
			t.Errorf("ISOLATION: projects A and B's RUN steps share one network namespace (%s)", aNS)
		}
		if !rep.InPool {
			t.Errorf("A's RUN step's default gateway is %q, not inside kiln's build network pool %s", rep.Gateway, pool)
		}
		for _, ifc := range rep.Interfaces {
			if name, ok := hostMACs[ifc.MAC]; ok && ifc.MAC != "" {
				t.Errorf("ISOLATION: A's RUN step sees the host's interface %s (%s) as %s", name, ifc.MAC, ifc.Name)
			}
			for _, a := range ifc.Addrs {
				if p, err := netip.ParsePrefix(a); err == nil && slices.Contains(hostIPs, p.Addr()) {
					t.Errorf("ISOLATION: A's RUN step has the host's address %s on %s", a, ifc.Name)
				}
			}
		}
		for _, ip := range bNet.IPs {
			if !pool.Contains(ip.Addr()) {
				t.Errorf("B's RUN step has address %s, outside kiln's pool %s", ip, pool)
			}
			if gw, err := netip.ParseAddr(rep.Gateway); err == nil && ip.Masked().Contains(gw) {
				t.Errorf("ISOLATION: projects A and B's RUN steps share the subnet %s", ip.Masked())
			}
		}
	})

	t.Run("sniffer sees none of B's traffic", func(t *testing.T) {
		if rep.OnHostNet {
			t.Fatalf("ISOLATION: A's RUN step is on the host's network (netns %s, gateway %q): the probe refused to sniff the host's traffic; everything on the host's interfaces would be visible", rep.NetNS, rep.Gateway)
		}
		if rep.Sniff.Error != "" {
			if strings.Contains(rep.Sniff.Error, "operation not permitted") {
				t.Logf("RUN steps cannot open AF_PACKET sockets (%s): they cannot sniff at all", rep.Sniff.Error)
				return
			}
			t.Fatalf("the sniffer failed: %s", rep.Sniff.Error)
		}
		if rep.Sniff.Frames == 0 {
			t.Errorf("the sniffer captured no frame at all, not even the step's own probes: it did not work, so its silence proves nothing")
		}
		if !strings.Contains(rb.Stdout+rb.Stderr, "victim: sent ") || strings.Contains(rb.Stdout+rb.Stderr, "victim: sent 0 ") {
			t.Errorf("B's victim step sent no datagram with B's token (positive control):\n%s", tail(rb.Stderr, 3000))
		}
		needles := map[string]string{
			"B's project token":        tokB,
			"the admin token":          s.Token,
			"B's project id":           projB,
			"B's victim step's marker": victimMarker,
			"B's --save build's step":  saveMarker,
			"B's source build context": sourceMarker,
			"B's --save build id":      saveID,
			"B's source build id":      src.BuildId,
		}
		frames := readCapture(t, filepath.Join(outA, "capture.bin"))
		found := map[string]int{}
		for _, f := range frames {
			for what, n := range needles {
				if at := bytes.Index(f.data, []byte(n)); n != "" && at >= 0 {
					if found[what] == 0 {
						t.Errorf("ISOLATION: A's RUN step sniffed %s on its ifindex %d: %s", what, f.ifindex, excerpt(f.data, at, len(n)))
					}
					found[what]++
				}
			}
			if loc := anyTokenRe.FindIndex(f.data); loc != nil {
				if found["token"] == 0 {
					t.Errorf("ISOLATION: A's RUN step sniffed a kiln token on its ifindex %d: %s", f.ifindex, excerpt(f.data, loc[0], loc[1]-loc[0]))
				}
				found["token"]++
			}
		}
		if len(found) > 0 {
			t.Errorf("frames with others' data, by what they held: %v (of %d frames sniffed)", found, len(frames))
		}
	})

	t.Run("connect probes all fail", func(t *testing.T) {
		byOutcome := map[string]int{}
		for _, p := range rep.Probes {
			t.Logf("%-4s %-28s %-12s %5dms  %s", p.Kind, p.Addr, p.Outcome, p.Ms, p.Label)
			byOutcome[p.Outcome]++
			switch {
			case p.Outcome == "connected":
				t.Errorf("ISOLATION: A's RUN step connected to %s at %s", p.Label, p.Addr)
			case p.Outcome == "answered":
				t.Errorf("ISOLATION: A's RUN step got ICMP echo replies from %s at %s", p.Label, p.Addr)
			case strings.HasPrefix(p.Outcome, "skipped"):
				if p.Kind == "tcp" {
					t.Errorf("probe of %s (%s) was %s", p.Label, p.Addr, p.Outcome)
				}
			case p.Kind == "tcp" && p.Ms > 5000:
				t.Errorf("connecting to %s at %s took %dms before it failed (%s): want a short bound", p.Label, p.Addr, p.Ms, p.Outcome)
			}
		}
		want := len(tg.TCP) + len(tg.ICMP)
		if !rep.OnHostNet {
			want += len(tg.GatewayPorts) + 1
		}
		if len(rep.Probes) < want {
			t.Errorf("the probe ran %d probes, want %d", len(rep.Probes), want)
		}
		t.Logf("%d probes from A's RUN step, by outcome: %v", len(rep.Probes), byOutcome)
	})

	t.Run("listen probe exposes nothing on the host", func(t *testing.T) {
		if rep.OnHostNet {
			t.Fatalf("ISOLATION: A's RUN step is on the host's network: a port it binds is the host's (the probe refused to bind)")
		}
		if len(rep.Listen) == 0 || !strings.HasPrefix(rep.Listen[0], "0.0.0.0:") || !aListens {
			t.Errorf("A's step did not listen on 0.0.0.0:%d in its own namespace (%v): the probe proves nothing", listenPort, rep.Listen)
		}
		if hostListens != nil {
			t.Errorf("ISOLATION: the host's network namespace has a listener on port %d while A's RUN step binds 0.0.0.0:%d", listenPort, listenPort)
		}
		if hostDial == nil {
			t.Errorf("ISOLATION: the host reached A's RUN step's listener at 127.0.0.1:%d", listenPort)
		}
	})

	t.Run("proc net shows none of the host's sockets", func(t *testing.T) {
		ports := map[int]string{kilnPort: "kiln serve's port"}
		for _, p := range procs {
			for _, port := range p.ports {
				ports[port] = "a builder's TCP port"
			}
		}
		for _, line := range rep.ProcTCP {
			f := strings.Fields(line)
			if len(f) < 4 || f[0] == "sl" {
				continue
			}
			_, portHex, _ := strings.Cut(f[1], ":")
			if port, err := strconv.ParseInt(portHex, 16, 32); err == nil && ports[int(port)] != "" {
				t.Errorf("ISOLATION: A's RUN step's /proc/net/tcp shows %s (%d): %s", ports[int(port)], port, line)
			}
		}
		for _, line := range rep.ProcUnix {
			if strings.Contains(line, s.Data) || strings.Contains(line, "buildkit") {
				t.Errorf("ISOLATION: A's RUN step's /proc/net/unix shows a socket of kiln or its builders: %s", line)
			}
		}
	})

	t.Run("builders listen on no TCP port", func(t *testing.T) {
		if len(procs) < 2 {
			t.Errorf("%d builders running, want A's and B's: %+v", len(procs), s.builders(t))
		}
		for _, p := range procs {
			if len(p.ports) > 0 {
				t.Errorf("ISOLATION: project %s's buildkitd (pid %d) listens on TCP ports %v; builders must be reachable only through kiln's gateway", p.project, p.pid, p.ports)
			}
		}
	})

	t.Run("kiln's credentials stay out of builders", func(t *testing.T) {
		if len(rep.Env) > 0 {
			t.Errorf("ISOLATION: A's RUN step's environment holds kiln serve's variables: %q", rep.Env)
		}
		if len(rep.Paths) > 0 {
			t.Errorf("ISOLATION: A's RUN step sees kiln's data directory: %q", rep.Paths)
		}
		for _, p := range procs {
			for _, kv := range strings.Split(p.environ, "\x00") {
				// Only what kiln serve was given: builders may set
				// variables of their own (AWS_EC2_METADATA_DISABLED).
				if strings.Contains(kv, canary) {
					name, _, _ := strings.Cut(kv, "=")
					t.Errorf("ISOLATION: project %s's buildkitd (pid %d) inherited kiln serve's %s", p.project, p.pid, name)
				}
			}
		}
	})

	t.Run("RUN --network=none has only loopback", func(t *testing.T) {
		checkOnlyLoopback(t, filepath.Join(outA, "none-ifaces.json"), "RUN --network=none")
	})
}

// checkOnlyLoopback asserts that an ifaces report lists loopback alone
// (tunnel devices a kernel module adds to every namespace aside).
func checkOnlyLoopback(t *testing.T, path, what string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the probe's interface list: %v", err)
	}
	var ifs []struct {
		Name  string
		MAC   string
		Addrs []string
	}
	if err := json.Unmarshal(b, &ifs); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	sawLo := false
	for _, ifc := range ifs {
		switch {
		case ifc.Name == "lo":
			sawLo = true
		case len(ifc.Addrs) == 0 && slices.Contains([]string{"tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0", "ip6gre0"}, ifc.Name):
		default:
			t.Errorf("ISOLATION: a step with %s has interface %s (%s, %v); want loopback only", what, ifc.Name, ifc.MAC, ifc.Addrs)
		}
	}
	if !sawLo {
		t.Errorf("a step with %s has no loopback: %s", what, b)
	}
}

// `kiln build --network none`: every RUN step has loopback only.
func TestHostileNetworkNone(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--builder-subnets", isolatedPool(t))
	proj := s.createProject(t, "hostile-none")
	dir := probeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox AS probe\nCOPY kiln-probe /\n" +
		"RUN " + execForm("/kiln-probe", "ifaces", "-out", "/out/ifaces.json") + "\n" +
		"RUN timeout 5 wget -q -O- http://169.254.169.254/ > /out/metadata 2>&1; echo \"rc=$?\" >> /out/metadata\n" +
		"FROM scratch\nCOPY --from=probe /out /\n"})
	out := t.TempDir()
	s.mustKiln(t, dir, "build", "--project", proj, "--network", "none", "-o", "type=local,dest="+out, "--progress", "plain", ".")
	checkOnlyLoopback(t, filepath.Join(out, "ifaces.json"), "kiln build --network none")
	if b, _ := os.ReadFile(filepath.Join(out, "metadata")); bytes.Contains(b, []byte("rc=0")) {
		t.Errorf("ISOLATION: with --network none a RUN step fetched http://169.254.169.254/: %s", b)
	} else if !bytes.Contains(b, []byte("rc=")) || bytes.Contains(b, []byte("rc=139")) {
		t.Errorf("the metadata fetch with --network none left no meaningful exit status: %s", b)
	}
}

// mirror is an HTTP server in a network namespace the test made, on a
// private /24 routed through the host: a stand-in for a package mirror on
// the operator's network.
type mirror struct {
	CIDR string // the /24
	URL  string // http://IP:PORT/mirror.txt
	Body string
}

func startMirror(t *testing.T) mirror {
	t.Helper()
	tag := randomHex(t, 3)
	ns, host, peer := "kiln-e2e-mirror-"+tag, "kmir"+tag, "mir"+tag
	// A /24 in 10.199.0.0/16 that no interface of the host uses.
	hostIPs, _ := hostAddrs(t)
	var subnet netip.Prefix
	for i := 0; i < 20 && !subnet.IsValid(); i++ {
		b := make([]byte, 1)
		rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 199, 1 + b[0]%250, 0}), 24)
		if !slices.ContainsFunc(hostIPs, p.Contains) {
			subnet = p
		}
	}
	if !subnet.IsValid() {
		t.Fatal("no free /24 in 10.199.0.0/16 for the mirror")
	}
	a := subnet.Addr().As4()
	gwIP := netip.AddrFrom4([4]byte{a[0], a[1], a[2], 1}).String()
	mirrorIP := netip.AddrFrom4([4]byte{a[0], a[1], a[2], 2}).String()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "link", "del", host).Run() // gone with the namespace, normally
	})
	run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
	run("ip", "addr", "add", gwIP+"/24", "dev", host)
	run("ip", "link", "set", host, "up")
	run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	run("ip", "netns", "exec", ns, "ip", "addr", "add", mirrorIP+"/24", "dev", peer)
	run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
	run("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", gwIP)

	root := t.TempDir()
	body := "mirror-" + tag + "\n"
	os.WriteFile(filepath.Join(root, "mirror.txt"), []byte(body), 0o644)
	port := "8080"
	httpd := exec.Command("ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", mirrorIP+":"+port, "-h", root)
	var log bytes.Buffer
	httpd.Stdout, httpd.Stderr = &log, &log
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { httpd.Wait(); close(exited) }()
	t.Cleanup(func() {
		httpd.Process.Kill() // ip netns exec execs busybox: this is httpd's pid
		<-exited
		if t.Failed() {
			t.Logf("mirror httpd output:\n%s", log.String())
		}
	})
	m := mirror{CIDR: subnet.String(), URL: "http://" + mirrorIP + ":" + port + "/mirror.txt", Body: body}
	c := &http.Client{Timeout: 2 * time.Second}
	eventually(t, 10*time.Second, "the mirror to answer from its namespace", func() bool {
		res, err := c.Get(m.URL)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return m
}

// The operator allows a private mirror's range for project A only: A's RUN
// steps reach it, B's (no allow-list) do not, and once the operator
// clears A's list A's next build does not either.
func TestHostileEgressAllowList(t *testing.T) {
	t.Parallel()
	m := startMirror(t)
	s := startServer(t, "--builder-subnets", isolatedPool(t))
	projA := s.createProject(t, "egress-allowed")
	projB := s.createProject(t, "egress-denied")
	s.mustKiln(t, t.TempDir(), "projects", "update", projA, "--egress-allow", m.CIDR)

	// fetch starts a build whose RUN step fetches the mirror's file; its
	// exit status, body and wget's words are exported to out. (busybox
	// 1.35's wget -T crashes: timeout bounds it instead.)
	fetch := func(project, out string) *asyncKiln {
		dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox AS fetch\n" +
			"RUN mkdir /out && echo " + randomHex(t, 4) + " > /out/nonce && { timeout 5 wget -q -O /out/body " + m.URL + " > /out/log 2>&1; echo \"rc=$?\" > /out/rc; }\n" +
			"FROM scratch\nCOPY --from=fetch /out /\n"})
		return s.kilnAsync(t, dir, nil, "build", "--project", project, "-o", "type=local,dest="+out, "--progress", "plain", ".")
	}
	type fetched struct{ rc, body, log string }
	outcome := func(a *asyncKiln, out, what string) fetched {
		t.Helper()
		if r := a.wait(t, 4*time.Minute); r.Err != nil {
			t.Fatalf("%s: kiln build: %v\n%s", what, r.Err, tail(r.Stderr, 4000))
		}
		read := func(name string) string { b, _ := os.ReadFile(filepath.Join(out, name)); return string(b) }
		return fetched{strings.TrimSpace(read("rc")), read("body"), read("log")}
	}

	// A and B fetch at the same time.
	outA, outB := t.TempDir(), t.TempDir()
	runA, runB := fetch(projA, outA), fetch(projB, outB)
	a, b := outcome(runA, outA, "project A"), outcome(runB, outB, "project B")
	if a.rc != "rc=0" || a.body != m.Body {
		t.Errorf("project A (--egress-allow %s) could not fetch %s: %s, body %q, wget: %s", m.CIDR, m.URL, a.rc, a.body, a.log)
	}
	if b.rc == "rc=0" || strings.Contains(b.body, m.Body) {
		t.Errorf("ISOLATION: project B (no allow-list) fetched %s from a private range: %s, body %q", m.URL, b.rc, b.body)
	}
	if b.rc == "" || b.rc == "rc=139" {
		t.Errorf("project B's fetch left no meaningful exit status (%s, wget: %q)", b.rc, b.log)
	}

	// The operator takes the range back: at once on A's running builder
	// (its egress chain no longer names the range), and A's next build is
	// refused too.
	s.mustKiln(t, t.TempDir(), "projects", "update", projA, "--egress-allow", "none")
	if rules, err := exec.Command("iptables", "-w", "-S").Output(); err != nil {
		t.Fatalf("iptables -S: %v", err)
	} else if strings.Contains(string(rules), " -d "+m.CIDR+" ") {
		t.Errorf("ISOLATION: right after --egress-allow none the host's rules still let a builder reach %s:\n%s", m.CIDR, rules)
	}
	outA2 := t.TempDir()
	again := outcome(fetch(projA, outA2), outA2, "project A after --egress-allow none")
	if again.rc == "rc=0" || strings.Contains(again.body, m.Body) {
		t.Errorf("ISOLATION: after `kiln projects update --egress-allow none`, project A's next build still fetched %s (%s): revoking an allowed range does not reach its running builder", m.URL, again.rc)
	}
	if again.rc == "" || again.rc == "rc=139" {
		t.Errorf("project A's fetch after revoking left no meaningful exit status (%s, wget: %q)", again.rc, again.log)
	}
}

// startServerMayFail starts one more `kiln serve` with args, like
// startServer, but a server that exits at start is an answer here, not a
// failure: it returns nil and the server's output.
func startServerMayFail(t *testing.T, args ...string) (*server, string) {
	t.Helper()
	data, err := os.MkdirTemp("", runTag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	addr := freeAddr(t)
	s := &server{URL: "http://" + addr, Data: data, log: filepath.Join(data, "serve.log"), addr: addr, args: args}
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(kilnBin, append([]string{"serve", "--data", data, "--addr", addr, "--buildkitd", buildkitd, "--log-level", "debug"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	s.exited = exited
	go func() { s.cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() { s.stop(t) })
	for deadline := time.Now().Add(20 * time.Second); ; {
		if res, err := http.Get(s.URL + "/healthz"); err == nil {
			res.Body.Close()
			break
		}
		select {
		case <-exited:
			s.cmd = nil
			b, _ := os.ReadFile(s.log)
			return nil, string(b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("kiln serve did not answer /healthz within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	s.Token = strings.TrimSpace(string(tok))
	return s, ""
}

func bridgeOf(t *testing.T, s *server, project string) string {
	t.Helper()
	for _, b := range s.builders(t) {
		if b.ProjectID == project {
			return b.Bridge
		}
	}
	t.Fatalf("no builder of project %s: %+v", project, s.builders(t))
	return ""
}

// Two kiln serves given one --builder-subnets (an operator's slip, an
// upgrade that starts the new server before the old one has stopped, two
// developers' test runs at once): the second must refuse the pool, or keep
// bridges of its own; and when one stops, the other's RUN steps must stay
// behind their egress policy.
func TestHostileTwoServersOnePool(t *testing.T) {
	t.Parallel()
	m := startMirror(t)
	pool := isolatedPool(t)
	s1 := startServer(t, "--builder-subnets", pool)
	p1 := s1.createProject(t, "pool-first")
	// The mirror is the positive control: a step that cannot reach it has
	// no working network, and then its failed probes prove nothing.
	s1.mustKiln(t, t.TempDir(), "projects", "update", p1, "--egress-allow", m.CIDR)
	mirrorAddr := strings.TrimPrefix(strings.TrimSuffix(m.URL, "/mirror.txt"), "http://")
	warm := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN true\n"})
	s1.mustKiln(t, warm, "build", "--project", p1, "--progress", "quiet", ".")
	bridge1 := bridgeOf(t, s1, p1)

	s2, refused := startServerMayFail(t, "--builder-subnets", pool)
	if s2 == nil {
		t.Logf("a second kiln serve with the pool %s in use refused to start:\n%s", pool, tail(refused, 2000))
		return
	}
	p2 := s2.createProject(t, "pool-second")
	if r := s2.kiln(t, warm, nil, "build", "--project", p2, "--progress", "quiet", "."); r.Err != nil {
		t.Logf("the second server's build with the pool %s in use failed: %s", pool, tail(r.Stderr, 2000))
	} else if bridge2 := bridgeOf(t, s2, p2); bridge2 == bridge1 {
		t.Errorf("ISOLATION: two kiln serves with --builder-subnets %s both put a builder on bridge %s: the RUN steps of one server's tenants share a link with the other's", pool, bridge1)
	}
	s2.stop(t)

	if _, err := net.InterfaceByName(bridge1); err != nil {
		t.Errorf("ISOLATION: stopping the second server deleted the first server's bridge %s (%v), which its running builder uses", bridge1, err)
	}
	// The first server's steps are still fenced in.
	hostNS := netnsOf(t, "self")
	hostIPs, _ := hostAddrs(t)
	_, kilnPort, _ := net.SplitHostPort(s1.addr)
	port, _ := strconv.Atoi(kilnPort)
	tg := probeTargets{HostNetNS: hostNS, GatewayPorts: []int{port},
		TCP: []probeTarget{{"cloud metadata (169.254.169.254:80)", "169.254.169.254:80"},
			{"the mirror its project may reach", mirrorAddr}},
		ICMP: []probeTarget{{"cloud metadata (169.254.169.254)", "169.254.169.254"}}}
	for _, ip := range hostIPs {
		if ip.Is4() {
			tg.ICMP = append(tg.ICMP, probeTarget{"the host's address " + ip.String(), ip.String()})
		}
	}
	targets, _ := json.Marshal(tg)
	dir := probeContext(t, map[string]string{"targets.json": string(targets),
		"Dockerfile": baseStages + "FROM busybox AS attack\nCOPY kiln-probe targets.json /\n" +
			"RUN " + execForm("/kiln-probe", "attack", "-nonce", randomHex(t, 4), "-targets", "/targets.json", "-out", "/out",
			"-pool", pool, "-max", "3s") + "\n" +
			"FROM scratch\nCOPY --from=attack /out /\n"})
	out := t.TempDir()
	s1.mustKiln(t, dir, "build", "--project", p1, "-o", "type=local,dest="+out, "--progress", "plain", ".")
	var rep probeReport
	if b, err := os.ReadFile(filepath.Join(out, "report.json")); err != nil || json.Unmarshal(b, &rep) != nil {
		t.Fatalf("the probe's report: %v", err)
	}
	for _, p := range rep.Probes {
		t.Logf("%-4s %-28s %-12s %5dms  %s", p.Kind, p.Addr, p.Outcome, p.Ms, p.Label)
		switch {
		case p.Addr == mirrorAddr:
			if p.Outcome != "connected" {
				t.Errorf("after a second server with the same pool stopped, the first server's RUN step cannot reach the mirror its project may reach (%s): its network is broken, so its other probes prove nothing", p.Outcome)
			}
		case p.Outcome == "connected" || p.Outcome == "answered":
			t.Errorf("ISOLATION: after a second server with the same pool stopped, the first server's RUN step reached %s at %s (%s): its egress policy is gone", p.Label, p.Addr, p.Outcome)
		}
	}
	if rep.OnHostNet {
		t.Errorf("ISOLATION: after a second server with the same pool stopped, the first server's RUN step is on the host's network")
	}
}
