// Package kubetest gives tests a real single-node Kubernetes: the one
// hack/kube/up.sh assembles from the binaries hack/kube/build.sh builds from
// pinned Go modules (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet, containerd with runc and Debian's bridge CNI),
// with dynamic hostPath volumes (StorageClass "kiln-local"), NetworkPolicy
// enforcement (kube-network-policies) and kiln's builder image
// (hack/kube/builder.Dockerfile, built by kiln and imported into containerd).
// There is no kube-proxy and no cluster DNS: pods are reached by pod IP.
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		kubetest.Stop()
//		os.Exit(code)
//	}
//
//	func TestX(t *testing.T) {
//		c := kubetest.Start(t) // the process's cluster, brought up on first use
//		c.Kubectl(t, "get", "nodes")
//	}
//
// One cluster per test process, and one per machine: its addresses, ports
// and interface names are fixed. A second test process wanting one waits
// (a lock on /run/kiln-kube.lock) until the first process stops its cluster
// or exits. A process that exits without Stop (go test's timeout, kill -9)
// does not leave its cluster running: up.sh's watchdog stops it once the
// process is gone, and the next Start removes the directory.
//
// It needs root and what hack/setup.sh --tests installs and builds; a
// missing piece fails the test through testenv.Missing, naming what to run.
//
// It is a test helper: it imports "testing" and must not be imported by
// kiln's own code.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// Cluster is the single-node Kubernetes hack/kube/up.sh runs, one per test process.
type Cluster struct {
	Dir        string // the cluster's directory (certificates, logs, data); removed by Stop
	Kubeconfig string // cluster-admin kubeconfig (a static token) for the apiserver at NodeAddr

	PodCIDR     string // "10.215.0.0/24": pods' addresses, reachable from the host
	ServiceCIDR string // "10.214.0.0/24": allocated, but no kube-proxy gives it a data path
	NodeAddr    string // "10.213.0.1": the apiserver's (port 16443) and the kubelet's address
	// HostCIDR is where the host's own connections to pod IPs come from
	// (the CNI bridge's gateway, "10.215.0.1/32"): a NetworkPolicy ingress
	// ipBlock of it lets the host in. Processes of root on the host are
	// never filtered (the policy engine exempts them, as for the kubelet's
	// probes); others are, like any peer.
	HostCIDR string

	BuilderImage string // "localhost/kiln/builder:dev": built by kiln, imported; pods use imagePullPolicy Never
	StorageClass string // "kiln-local": the default, hostPath volumes deleted with their claim

	SetUp time.Duration // how long up.sh and the builder image took

	kubectlBin string // bin/kube/kubectl, of the cluster's version
}

// The process's cluster, guarded by mu.
var (
	mu      sync.Mutex
	running *Cluster
	lock    *os.File // holds the machine-wide lock while running is up
	failed  error    // the first start failed: every later Start fails alike
	missing string   // what to install or build, when that is why it failed
)

const (
	lockPath  = "/run/kiln-kube.lock"
	dirPrefix = "kiln-kube-"
	upTimeout = 6 * time.Minute
)

// Start returns the process's cluster, bringing it up on first use
// (hack/kube/up.sh in a short temporary directory with this process as
// the watchdog's owner, then hack/kube/builder-image.sh). A machine without
// the binaries or packages fails the test via testenv.Missing naming the
// command to run.
func Start(t testing.TB) *Cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if running == nil && failed == nil {
		running, missing, failed = start(t)
	}
	if missing != "" {
		testenv.Missing(t, "kubetest: %s", missing)
	}
	if failed != nil {
		t.Fatalf("kubetest: %v", failed)
	}
	return running
}

// Stop tears the process's cluster down (hack/kube/down.sh) and removes
// its directory; for TestMain after m.Run. Without a cluster it does
// nothing.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if running == nil {
		return
	}
	if out, err := script(context.Background(), running.Dir, "down.sh"); err != nil {
		fmt.Fprintf(os.Stderr, "kubetest: hack/kube/down.sh %s: %v\n%s", running.Dir, err, out)
	} else {
		os.RemoveAll(running.Dir)
	}
	running = nil
	unlock()
}

// Kubectl runs kubectl against the cluster and returns its standard
// output; an error (or two minutes) fails the test with kubectl's
// standard error.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	return c.kubectl(t, nil, args...)
}

// Apply runs kubectl apply -f - with manifest (YAML or JSON) on its
// standard input, as Kubectl does.
func (c *Cluster) Apply(t testing.TB, manifest string) string {
	t.Helper()
	return c.kubectl(t, strings.NewReader(manifest), "apply", "-f", "-")
}

func (c *Cluster) kubectl(t testing.TB, stdin *strings.Reader, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.kubectlBin, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String()
}

// start brings the cluster up; missing says what to install when that is
// why it cannot.
func start(t testing.TB) (_ *Cluster, missing string, _ error) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, "", err
	}
	if m := check(root); m != "" {
		return nil, m, errors.New(m)
	}
	if err := acquire(t); err != nil {
		return nil, "", err
	}
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	sweep()
	// Short: containerd's socket path under it must fit in 108 bytes.
	dir, err := os.MkdirTemp("/tmp", dirPrefix)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	t0 := time.Now()
	t.Logf("kubetest: starting a single-node Kubernetes under %s (hack/kube/up.sh)", dir)
	out, err := script(ctx, dir, "up.sh")
	if err != nil {
		return nil, "", stopFailed(dir, fmt.Errorf("hack/kube/up.sh %s: %v\n%s", dir, err, tail(out, 40)))
	}
	up := time.Since(t0)
	t.Logf("kubetest: cluster up in %.1fs; building the builder image with kiln (hack/kube/builder-image.sh)", up.Seconds())
	t1 := time.Now()
	out, err = script(ctx, dir, "builder-image.sh")
	if err != nil {
		return nil, "", stopFailed(dir, fmt.Errorf("hack/kube/builder-image.sh %s: %v\n%s", dir, err, tail(out, 40)))
	}
	c, err := load(root, dir)
	if err != nil {
		return nil, "", stopFailed(dir, err)
	}
	c.SetUp = time.Since(t0)
	t.Logf("kubetest: cluster set up in %.1fs (up.sh %.1fs, builder image %.1fs): KUBECONFIG=%s",
		c.SetUp.Seconds(), up.Seconds(), time.Since(t1).Seconds(), c.Kubeconfig)
	ok = true
	return c, "", nil
}

// check returns what to install or build when something the cluster needs
// is missing, "" when nothing is.
func check(root string) string {
	if os.Geteuid() != 0 {
		return "the Kubernetes test cluster needs root (containerd, the kubelet, network interfaces): run the tests as root (CI does)"
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl",
		"containerd", "ctr", "containerd-shim-runc-v2", "kube-network-policies", "pause", "ociarchive"} {
		if _, err := os.Stat(filepath.Join(root, "bin", "kube", b)); err != nil {
			return "bin/kube/" + b + " is missing: run hack/kube/build.sh (hack/setup.sh --tests does; about 20 minutes the first time)"
		}
	}
	for _, b := range []string{"kiln", "buildkitd", "buildctl", "runc"} {
		if _, err := os.Stat(filepath.Join(root, "bin", b)); err != nil {
			return "bin/" + b + " is missing: run hack/setup.sh --tests"
		}
	}
	for cmd, pkg := range map[string]string{"iptables": "iptables", "openssl": "openssl",
		"flock": "util-linux", "curl": "curl", "/usr/lib/cni/bridge": "containernetworking-plugins", "/bin/busybox": "busybox-static"} {
		if _, err := exec.LookPath(cmd); err != nil {
			return cmd + " is missing: apt-get install " + pkg + " (hack/setup.sh --tests does)"
		}
	}
	return ""
}

// acquire takes the machine-wide lock, waiting while another test process
// holds it (its cluster runs).
func acquire(t testing.TB) error {
	t.Helper()
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	for waited := time.Duration(0); ; waited += time.Second {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if waited%(30*time.Second) == 0 {
			t.Logf("kubetest: another test process's cluster runs (%s is locked): waiting for it to stop", lockPath)
		}
		time.Sleep(time.Second)
	}
	lock = f
	return nil
}

func unlock() {
	if lock != nil {
		lock.Close() // releases the flock
		lock = nil
	}
}

// sweep removes the directories of clusters whose test process died
// without Stop: their watchdog has run down.sh (no process left in pids/)
// and their owner is gone. Run under the lock, so none of them is starting.
func sweep() {
	dirs, _ := filepath.Glob(filepath.Join("/tmp", dirPrefix+"*"))
	for _, d := range dirs {
		if b, err := os.ReadFile(filepath.Join(d, "owner")); err == nil {
			if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 && syscall.Kill(pid, 0) == nil {
				continue
			}
		}
		if pids, _ := os.ReadDir(filepath.Join(d, "pids")); len(pids) > 0 {
			// Not stopped yet: up.sh stops a stale cluster before it starts
			// its own; the directory goes next time.
			continue
		}
		os.RemoveAll(d)
	}
}

// stopFailed runs down.sh on a cluster that failed to come up and keeps
// its directory (logs) for the error's reader.
func stopFailed(dir string, err error) error {
	if out, derr := script(context.Background(), dir, "down.sh"); derr != nil {
		return fmt.Errorf("%w\nhack/kube/down.sh %s: %v\n%s", err, dir, derr, tail(out, 10))
	}
	return fmt.Errorf("%w\n(logs in %s/logs)", err, dir)
}

// script runs hack/kube/NAME DIR with this process as the cluster's owner
// and returns its combined output. Its own process group: a ^C to the
// terminal reaches this process, whose exit the watchdog handles, and not
// the cluster's processes halfway through.
func script(ctx context.Context, dir, name string) ([]byte, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", "kube", name), dir)
	cmd.Env = append(os.Environ(), "KUBE_OWNER_PID="+strconv.Itoa(os.Getpid()))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second
	return cmd.CombinedOutput()
}

// load reads DIR/cluster.env, written by up.sh.
func load(root, dir string) (*Cluster, error) {
	f, err := os.Open(filepath.Join(dir, "cluster.env"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	c := &Cluster{
		Dir:          dir,
		Kubeconfig:   filepath.Join(dir, "kubeconfig"),
		kubectlBin:   filepath.Join(root, "bin", "kube", "kubectl"),
		PodCIDR:      env["KUBE_POD_CIDR"],
		ServiceCIDR:  env["KUBE_SERVICE_CIDR"],
		NodeAddr:     env["KUBE_ADDR"],
		HostCIDR:     env["KUBE_HOST_CIDR"],
		BuilderImage: "localhost/kiln/builder:dev",
		StorageClass: env["KUBE_STORAGE_CLASS"],
	}
	if c.PodCIDR == "" || c.NodeAddr == "" || c.HostCIDR == "" || c.StorageClass == "" {
		return nil, fmt.Errorf("%s/cluster.env lacks the cluster's addresses", dir)
	}
	return c, nil
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
