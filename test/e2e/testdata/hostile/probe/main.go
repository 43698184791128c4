// Command kiln-probe is what a hostile tenant runs in a RUN step: it looks
// at the network the step was given, sniffs it, knocks on the host and on
// other builders, and writes what it found for the e2e test to judge
// (test/e2e/hostile_test.go). It judges nothing itself.
//
// It is compiled by the test with CGO_ENABLED=0 and copied into the build
// context; it uses the standard library only.
//
//	kiln-probe attack -targets FILE -out DIR -listen PORT -pool CIDR
//	kiln-probe victim -listen PORT -secret FILE -marker M -pool CIDR
//	kiln-probe ifaces -out FILE
//
// attack and victim run until the test creates the file
// /kiln-probe-ctl/stop in their root (through /proc/PID/root) or -max
// passes; attack creates /kiln-probe-ctl/ready once its sniffer is open.
//
// Traffic it sends on its own: TCP connects and ICMP echoes to the
// targets the test lists, and (victim) UDP datagrams to its own bridge
// gateway and subnet broadcast. A step that finds itself on the host's
// network (the host's namespace, or a default gateway outside kiln's pool,
// -pool) derives no destination from its routes, sniffs nothing and
// listens on nothing: it must not capture or expose the host's traffic,
// nor send to the host's real gateway. The test reports that as the
// isolation failure it is.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const ctlDir = "/kiln-probe-ctl"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kiln-probe attack|victim|ifaces [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "attack":
		err = attack(os.Args[2:])
	case "victim":
		err = victim(os.Args[2:])
	case "ifaces":
		err = ifacesCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kiln-probe:", err)
		os.Exit(1)
	}
}

// Targets is what the test asks the attacker to try (targets.json).
type Targets struct {
	// TCP: connect to each; every one should fail.
	TCP []Target `json:"tcp"`
	// ICMP: send echo requests to each IP; none should answer.
	ICMP []Target `json:"icmp"`
	// GatewayPorts: also connect to these ports (and ping) on the step's
	// own bridge gateway, when it lies inside the pool.
	GatewayPorts []int `json:"gateway_ports"`
	// Paths that must not exist inside the step (kiln's data directory).
	Paths []string `json:"paths"`
	// EnvMarkers: values that must not be in the step's environment.
	EnvMarkers []string `json:"env_markers"`
	// HostNetNS is the host's network namespace ("net:[…]"). A step found
	// in it, or with a default gateway outside the pool, is on the host's
	// network: it then neither sniffs nor listens (that would capture and
	// expose the host's traffic) and only probes the listed targets.
	HostNetNS string `json:"host_netns"`
}

// Target is one destination with what it stands for.
type Target struct {
	Label string `json:"label"`
	Addr  string `json:"addr"` // host:port (TCP) or IP (ICMP)
}

// Report is what attack found.
type Report struct {
	NetNS      string   `json:"netns"`
	OnHostNet  bool     `json:"on_host_network"`
	Interfaces []Iface  `json:"interfaces"`
	Gateway    string   `json:"gateway"`
	InPool     bool     `json:"gateway_in_pool"`
	Probes     []Result `json:"probes"`
	Listen     []string `json:"listen"` // addresses bound, or errors
	ProcTCP    []string `json:"proc_net_tcp"`
	ProcUnix   []string `json:"proc_net_unix"`
	Env        []string `json:"env_hits"`
	Paths      []string `json:"paths_present"`
	Sniff      Sniff    `json:"sniff"`
}

// Iface is one network interface the step sees.
type Iface struct {
	Index int      `json:"index"`
	Name  string   `json:"name"`
	MAC   string   `json:"mac"`
	Addrs []string `json:"addrs"`
}

// Result is one probe: Outcome is "connected", "answered" (ICMP),
// "refused", "unreachable", "timeout", "skipped: …" or "error: …".
type Result struct {
	Kind    string `json:"kind"` // tcp or icmp
	Label   string `json:"label"`
	Addr    string `json:"addr"`
	Outcome string `json:"outcome"`
	Millis  int64  `json:"ms"`
}

// Sniff summarises the capture; the frames are in capture.bin.
type Sniff struct {
	Error   string         `json:"error,omitempty"`
	Frames  int            `json:"frames"`
	Bytes   int64          `json:"bytes"`
	Kept    int64          `json:"bytes_kept"`
	ByIface map[string]int `json:"by_ifindex"`
	Seconds float64        `json:"seconds"`
}

func attack(args []string) error {
	fs := flag.NewFlagSet("attack", flag.ExitOnError)
	targetsFile := fs.String("targets", "/targets.json", "targets")
	out := fs.String("out", "/out", "report directory")
	listen := fs.Int("listen", 0, "TCP port to bind on every address")
	pool := fs.String("pool", "10.200.0.0/16", "kiln's build network pool")
	maxDur := fs.Duration("max", 2*time.Minute, "longest run")
	fs.String("nonce", "", "a value only this run has (to find the process)")
	fs.Parse(args)

	var tg Targets
	b, err := os.ReadFile(*targetsFile)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &tg); err != nil {
		return fmt.Errorf("%s: %w", *targetsFile, err)
	}
	poolP, err := netip.ParsePrefix(*pool)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(ctlDir, 0o755); err != nil {
		return err
	}

	rep := Report{}
	rep.NetNS, _ = os.Readlink("/proc/self/ns/net")
	rep.Interfaces = interfaces()
	gw := defaultGateway()
	if gw.IsValid() {
		rep.Gateway = gw.String()
		rep.InPool = poolP.Contains(gw)
	}
	rep.OnHostNet = rep.NetNS == tg.HostNetNS || !rep.InPool
	rep.ProcTCP = append(readLines("/proc/net/tcp"), readLines("/proc/net/tcp6")...)
	rep.ProcUnix = readLines("/proc/net/unix")
	for _, kv := range os.Environ() {
		for _, m := range tg.EnvMarkers {
			if m != "" && strings.Contains(kv, m) {
				rep.Env = append(rep.Env, kv)
			}
		}
	}
	for _, p := range tg.Paths {
		if _, err := os.Lstat(p); err == nil {
			rep.Paths = append(rep.Paths, p)
		}
	}

	// Sniff first, so that the capture covers everything after "ready".
	capture, err := os.Create(filepath.Join(*out, "capture.bin"))
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	sniffDone := make(chan Sniff, 1)
	if rep.OnHostNet {
		sniffDone <- Sniff{Error: "refused: the step is on the host's network"}
	} else {
		go func() { sniffDone <- sniff(capture, stop) }()
		time.Sleep(200 * time.Millisecond) // the socket is open or has failed
	}

	for _, network := range []string{"tcp4", "tcp6"} {
		if *listen == 0 || rep.OnHostNet {
			break
		}
		addr := "0.0.0.0:" + strconv.Itoa(*listen)
		if network == "tcp6" {
			addr = "[::]:" + strconv.Itoa(*listen)
		}
		l, err := net.Listen(network, addr)
		if err != nil {
			rep.Listen = append(rep.Listen, addr+": "+err.Error())
			continue
		}
		defer l.Close()
		rep.Listen = append(rep.Listen, l.Addr().String())
	}
	if err := os.WriteFile(filepath.Join(ctlDir, "ready"), []byte("ready\n"), 0o644); err != nil {
		return err
	}

	tcp, icmp := tg.TCP, tg.ICMP
	if gw.IsValid() {
		if !rep.OnHostNet {
			for _, port := range tg.GatewayPorts {
				tcp = append(tcp, Target{Label: "the host as the step's own bridge gateway, port " + strconv.Itoa(port),
					Addr: net.JoinHostPort(gw.String(), strconv.Itoa(port))})
			}
			icmp = append(icmp, Target{Label: "the host as the step's own bridge gateway", Addr: gw.String()})
		} else {
			rep.Probes = append(rep.Probes, Result{Kind: "tcp", Label: "the step's own bridge gateway", Addr: gw.String(),
				Outcome: "skipped: the default gateway is outside the pool " + *pool})
		}
	}
	rep.Probes = append(rep.Probes, probeAll(tcp, icmp)...)

	waitStop(time.Now().Add(*maxDur))
	close(stop)
	rep.Sniff = <-sniffDone
	if err := capture.Close(); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	return os.WriteFile(filepath.Join(*out, "report.json"), js, 0o644)
}

// waitStop returns when the test creates the stop file, or at deadline.
func waitStop(deadline time.Time) {
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(ctlDir, "stop")); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probeAll runs every probe concurrently (bounded), each with a short
// timeout, and returns the results in the order given.
func probeAll(tcp, icmp []Target) []Result {
	results := make([]Result, len(tcp)+len(icmp))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, t := range tcp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = dialProbe(t)
		}()
	}
	for i, t := range icmp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[len(tcp)+i] = pingProbe(t, uint16(i+1))
		}()
	}
	wg.Wait()
	return results
}

const probeTimeout = 2 * time.Second

func dialProbe(t Target) Result {
	r := Result{Kind: "tcp", Label: t.Label, Addr: t.Addr}
	start := time.Now()
	c, err := net.DialTimeout("tcp", t.Addr, probeTimeout)
	r.Millis = time.Since(start).Milliseconds()
	if err == nil {
		c.Close()
		r.Outcome = "connected"
		return r
	}
	r.Outcome = classify(err)
	return r
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "unreachable"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "error: " + err.Error()
}

// pingProbe sends ICMP echo requests on a raw socket (a RUN step has
// CAP_NET_RAW) and waits for a reply from the target.
func pingProbe(t Target, id uint16) (r Result) {
	r = Result{Kind: "icmp", Label: t.Label, Addr: t.Addr}
	ip, err := netip.ParseAddr(t.Addr)
	if err != nil || !ip.Is4() {
		r.Outcome = "skipped: ICMP probes are IPv4 only"
		return r
	}
	start := time.Now()
	defer func() { r.Millis = time.Since(start).Milliseconds() }()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
	if err != nil {
		r.Outcome = "error: raw ICMP socket: " + err.Error()
		return r
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	to := &syscall.SockaddrInet4{Addr: ip.As4()}
	id ^= uint16(os.Getpid())
	deadline := time.Now().Add(probeTimeout)
	buf := make([]byte, 1500)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		if err := syscall.Sendto(fd, echoRequest(id, seq), 0, to); err != nil {
			r.Outcome = classify(err)
			return r
		}
		wait := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(wait) {
			n, from, err := syscall.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			src, ok := from.(*syscall.SockaddrInet4)
			if !ok || src.Addr != ip.As4() || n < 28 {
				continue
			}
			ihl := int(buf[0]&0x0f) * 4
			if n < ihl+8 {
				continue
			}
			icmp := buf[ihl:n]
			switch icmp[0] {
			case 0: // echo reply
				if binary.BigEndian.Uint16(icmp[4:6]) == id {
					r.Outcome = "answered"
					return r
				}
			case 3: // destination unreachable from the target itself
				r.Outcome = "unreachable"
				return r
			}
		}
	}
	r.Outcome = "timeout"
	return r
}

func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "kilnprob")
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(b[2:], ^uint16(sum))
	return b
}

// maxCapture bounds capture.bin.
const maxCapture = 64 << 20

// sniff captures every frame on every interface the step can see
// (AF_PACKET, ETH_P_ALL, bound to no interface) until stop is closed.
// Each frame is written as ifindex, packet type and length (big-endian
// uint32 each), then the bytes.
func sniff(w *os.File, stop <-chan struct{}) (s Sniff) {
	s.ByIface = map[string]int{}
	start := time.Now()
	defer func() { s.Seconds = time.Since(start).Seconds() }()
	const ethPAll = 0x0003
	proto := int(htons(ethPAll))
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, proto)
	if err != nil {
		s.Error = "AF_PACKET socket: " + err.Error()
		<-stop
		return s
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(ethPAll)}); err != nil {
		s.Error = "bind: " + err.Error()
		<-stop
		return s
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
	tv := syscall.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	bw := bufio.NewWriterSize(w, 1<<20)
	defer bw.Flush()
	buf := make([]byte, 65536)
	hdr := make([]byte, 12)
	for {
		select {
		case <-stop:
			return s
		default:
		}
		n, from, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		ll, _ := from.(*syscall.SockaddrLinklayer)
		idx, ptype := 0, 0
		if ll != nil {
			idx, ptype = ll.Ifindex, int(ll.Pkttype)
		}
		s.Frames++
		s.Bytes += int64(n)
		s.ByIface[strconv.Itoa(idx)]++
		if s.Kept+int64(n)+12 > maxCapture {
			continue
		}
		binary.BigEndian.PutUint32(hdr[0:], uint32(idx))
		binary.BigEndian.PutUint32(hdr[4:], uint32(ptype))
		binary.BigEndian.PutUint32(hdr[8:], uint32(n))
		bw.Write(hdr)
		bw.Write(buf[:n])
		s.Kept += int64(n) + 12
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// victim is an innocent project's RUN step that uses a secret on its own
// network: it listens on a port and sends datagrams carrying the secret to
// its gateway and its subnet's broadcast address until stopped.
func victim(args []string) error {
	fs := flag.NewFlagSet("victim", flag.ExitOnError)
	listen := fs.Int("listen", 0, "TCP port to listen on")
	secretFile := fs.String("secret", "", "file with a secret to send")
	marker := fs.String("marker", "", "a marker to send with it")
	pool := fs.String("pool", "10.200.0.0/16", "kiln's build network pool")
	maxDur := fs.Duration("max", 3*time.Minute, "longest run")
	fs.String("nonce", "", "a value only this run has (to find the process)")
	fs.Parse(args)
	if err := os.MkdirAll(ctlDir, 0o755); err != nil {
		return err
	}
	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		return err
	}
	poolP, err := netip.ParsePrefix(*pool)
	if err != nil {
		return err
	}
	gw := defaultGateway()
	if !gw.IsValid() || !poolP.Contains(gw) {
		// On the host's network: do not expose a port there.
		fmt.Printf("victim: gateway %v is outside the pool %s: on the host's network; listening on nothing, sending nothing\n", gw, *pool)
		waitStop(time.Now().Add(*maxDur))
		fmt.Printf("victim: sent 0 datagrams\n")
		return nil
	}
	l, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(*listen))
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("victim\n"))
			c.Close()
		}
	}()
	payload := []byte("kiln-victim " + *marker + " Authorization: Bearer " + strings.TrimSpace(string(secret)) + "\n")
	dests := []*net.UDPAddr{{IP: gw.AsSlice(), Port: 9}}
	if bc := broadcastOf(gw); bc.IsValid() && poolP.Contains(bc) {
		dests = append(dests, &net.UDPAddr{IP: bc.AsSlice(), Port: 9})
	}
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return err
	}
	if raw, err := conn.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1) })
	}
	sent := 0
	deadline := time.Now().Add(*maxDur)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(ctlDir, "stop")); err == nil {
			break
		}
		for _, d := range dests {
			if _, err := conn.WriteToUDP(payload, d); err == nil {
				sent++
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("victim: sent %d datagrams to %v\n", sent, dests)
	return nil
}

// broadcastOf returns the broadcast address of the interface subnet that
// contains gw.
func broadcastOf(gw netip.Addr) netip.Addr {
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err != nil || !p.Addr().Is4() || !p.Masked().Contains(gw) {
				continue
			}
			b := p.Masked().Addr().As4()
			host := uint32(1)<<(32-p.Bits()) - 1
			v := binary.BigEndian.Uint32(b[:]) | host
			binary.BigEndian.PutUint32(b[:], v)
			return netip.AddrFrom4(b)
		}
	}
	return netip.Addr{}
}

func ifacesCmd(args []string) error {
	fs := flag.NewFlagSet("ifaces", flag.ExitOnError)
	out := fs.String("out", "", "file to write (default stdout)")
	fs.Parse(args)
	js, _ := json.MarshalIndent(interfaces(), "", "  ")
	if *out == "" {
		_, err := os.Stdout.Write(append(js, '\n'))
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(*out, js, 0o644)
}

func interfaces() []Iface {
	ifs, _ := net.Interfaces()
	var out []Iface
	for _, ifc := range ifs {
		i := Iface{Index: ifc.Index, Name: ifc.Name, MAC: ifc.HardwareAddr.String()}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			i.Addrs = append(i.Addrs, a.String())
		}
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	return out
}

// defaultGateway reads the IPv4 default route's gateway from
// /proc/net/route (hex, host byte order of a little-endian machine).
func defaultGateway() netip.Addr {
	for _, line := range readLines("/proc/net/route") {
		f := strings.Fields(line) // Iface Destination Gateway …; the first line is a header
		if len(f) < 3 || f[1] != "00000000" {
			continue
		}
		b, err := hex.DecodeString(f[2])
		if err != nil || len(b) != 4 {
			continue
		}
		return netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]})
	}
	return netip.Addr{}
}

func readLines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}
