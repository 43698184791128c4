package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/cliflag"
)

// Security floors kiln doctor checks against (see ../shared/DEPENDENCIES.md);
// hack/setup.sh builds versions at or above them into bin/.
var (
	// BuildKit v0.34.2 fixes GHSA-w26x-xg27-7qjc; v0.31.2 GHSA-g2h8-426c-7976
	// (a malicious client bypassing destination checks on local source
	// upload), v0.31.1 GHSA-7236-3392-c5c6, v0.28.1 CVE-2026-33747/33748.
	buildkitFloor = semver{0, 34, 2}
	// runc 1.5.0 carries the 2026 container-escape fixes on top of the
	// November 2025 ones (CVE-2025-31133, CVE-2025-52565, CVE-2025-52881,
	// fixed in 1.2.8).
	runcFloor = semver{1, 5, 0}
)

type semver [3]int

var versionRE = regexp.MustCompile(`v?(\d+)\.(\d+)\.(\d+)`)

func parseSemver(s string) (semver, bool) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return semver{}, false
	}
	var v semver
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, true
}

func (v semver) less(o semver) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] < o[i]
		}
	}
	return false
}

func (v semver) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// check is one doctor finding.
type check struct {
	level  string // "ok", "warn", "fail"
	name   string
	detail string
	fix    string // what to do, for warn and fail
}

type doctor struct {
	buildkitd string
	// runc is the runc buildkitd will run steps with: the one next to
	// buildkitd, which kiln puts first on buildkitd's PATH, else PATH's.
	// Empty means runcBeside(buildkitd).
	runc    string
	dataDir string
	apiURL  string
	token   string
	run     func(name string, args ...string) (string, error)
	now     func() time.Time
}

func (d *doctor) checks(ctx context.Context) []check {
	var out []check
	out = append(out, d.versionCheck("buildkitd", d.buildkitd, buildkitFloor,
		"BuildKit before v0.34.2 has known build-isolation flaws a hostile client can use (GHSA-w26x-xg27-7qjc, GHSA-g2h8-426c-7976, GHSA-7236-3392-c5c6, CVE-2026-33747/33748)",
		"run hack/setup.sh (it builds the pinned buildkitd into bin/) and point kiln serve --buildkitd at bin/buildkitd"))
	runc := d.runc
	if runc == "" {
		runc = runcBeside(d.buildkitd)
	}
	out = append(out, d.versionCheck("runc", runc, runcFloor,
		"runc before 1.5.0 has known container escapes (the November 2025 ones: CVE-2025-31133, CVE-2025-52565, CVE-2025-52881, and the 2026 ones)",
		"run hack/setup.sh (it builds runc ≥ 1.5 with seccomp into bin/, next to bin/buildkitd, where builders look first)"))
	out = append(out, d.seccompCheck(runc)...)
	out = append(out, d.kernelChecks()...)
	out = append(out, d.networkChecks()...)
	out = append(out, d.diskCheck())
	out = append(out, d.serverCheck(ctx))
	return out
}

func (d *doctor) versionCheck(name, bin string, floor semver, risk, fix string) check {
	text, err := d.run(bin, "--version")
	if err != nil {
		return check{"fail", name, fmt.Sprintf("%s not runnable: %v", bin, err), "run hack/setup.sh (it builds buildkitd and runc into bin/)"}
	}
	first := strings.SplitN(strings.TrimSpace(text), "\n", 2)[0]
	v, ok := parseSemver(first)
	if !ok {
		return check{"warn", name, fmt.Sprintf("cannot read a version from %q", first), "check the binary is the real " + name}
	}
	if v.less(floor) {
		return check{"warn", name, fmt.Sprintf("%s %s (%s) is older than %s: %s", name, v, bin, floor, risk), fix}
	}
	return check{"ok", name, fmt.Sprintf("%s %s (%s)", name, v, bin), ""}
}

// runcBeside names the runc buildkitd at buildkitd will find: kiln starts
// buildkitd with buildkitd's own directory first on its PATH (see
// builder.buildkitdEnv), so a runc there wins over the system's.
func runcBeside(buildkitd string) string {
	if !strings.ContainsRune(buildkitd, os.PathSeparator) {
		buildkitd, _ = exec.LookPath(buildkitd) // "" when not found: no directory to look in
	}
	if buildkitd != "" {
		p := filepath.Join(filepath.Dir(buildkitd), "runc")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	return "runc"
}

// seccompCheck reports whether runc was built with seccomp support: runc
// built without it (no cgo or no seccomp build tag) still runs, but every
// build step then runs without the default syscall filter. `runc --version`
// prints a libseccomp line only when the filter is compiled in. A runc that
// does not run is already reported by its version check.
func (d *doctor) seccompCheck(bin string) []check {
	text, err := d.run(bin, "--version")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "libseccomp:"); ok {
			return []check{{"ok", "runc seccomp", "built with libseccomp " + strings.TrimSpace(v), ""}}
		}
	}
	return []check{{"warn", "runc seccomp", bin + " was built without seccomp: build steps run with no syscall filter",
		"run hack/setup.sh (it builds runc with cgo, the seccomp tag and libseccomp-dev into bin/)"}}
}

func (d *doctor) kernelChecks() []check {
	var out []check
	fs, _ := os.ReadFile("/proc/filesystems")
	if strings.Contains(string(fs), "overlay") {
		out = append(out, check{"ok", "overlayfs", "the kernel supports overlayfs (builders' snapshotter)", ""})
	} else {
		out = append(out, check{"fail", "overlayfs", "overlayfs is not available", "load it: modprobe overlay"})
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) != "0" {
		out = append(out, check{"ok", "user namespaces", "enabled (max " + strings.TrimSpace(string(b)) + ")", ""})
	} else {
		out = append(out, check{"warn", "user namespaces", "disabled or unknown", "sysctl -w user.max_user_namespaces=15000 (needed for rootless builders)"})
	}
	foreign := map[string]string{"amd64": "qemu-aarch64", "arm64": "qemu-x86_64"}[runtime.GOARCH]
	if foreign != "" {
		if _, err := os.Stat(filepath.Join("/proc/sys/fs/binfmt_misc", foreign)); err == nil {
			out = append(out, check{"ok", "binfmt", foreign + " is registered: foreign-platform builds run under emulation", ""})
		} else {
			out = append(out, check{"warn", "binfmt", "no " + foreign + " handler: builds for the other architecture will fail",
				"apt-get install qemu-user-static binfmt-support (mount binfmt_misc first if /proc/sys/fs/binfmt_misc is empty)"})
		}
	}
	return out
}

// networkChecks: builders run RUN steps in private networks (the CNI
// bridge plugins) behind kiln's egress policy (iptables); without either a
// builder refuses to start rather than run steps on the host's network.
func (d *doctor) networkChecks() []check {
	var out []check
	dir := ""
	for _, cand := range []string{"/usr/lib/cni", "/opt/cni/bin"} {
		if _, err := os.Stat(filepath.Join(cand, "bridge")); err == nil {
			dir = cand
			break
		}
	}
	var missing []string
	for _, p := range []string{"bridge", "host-local", "loopback", "firewall"} {
		if dir == "" {
			missing = append(missing, p)
		} else if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		out = append(out, check{"fail", "build networks", "CNI plugins missing: " + strings.Join(missing, ", ") + " (builders will not start: RUN steps never get the host's network)",
			"apt-get install containernetworking-plugins (hack/setup.sh does), or pass kiln serve --cni-bin-dir"})
	} else {
		out = append(out, check{"ok", "build networks", "CNI plugins in " + dir + ": RUN steps get private networks", ""})
	}
	if _, err := d.run("iptables", "-w", "-L", "-n"); err != nil {
		out = append(out, check{"fail", "egress policy", "iptables is not usable: " + err.Error(),
			"apt-get install iptables (hack/setup.sh does); kiln serve runs as root"})
	} else {
		out = append(out, check{"ok", "egress policy", "iptables works: kiln can keep RUN steps from the host and private ranges", ""})
	}
	return out
}

func (d *doctor) diskCheck() check {
	dir := d.dataDir
	for dir != "/" {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return check{"warn", "disk", fmt.Sprintf("cannot stat %s: %v", dir, err), "check the data directory (--data / KILN_DATA)"}
	}
	free := float64(st.Bavail) * float64(st.Bsize) / (1 << 30)
	detail := fmt.Sprintf("%.1f GiB free at %s (data dir %s)", free, dir, d.dataDir)
	switch {
	case free < 1:
		return check{"fail", "disk", detail, "free space: builders wedge when their disk fills; lower projects' keep_gb or move --data"}
	case free < 10:
		return check{"warn", "disk", detail, "builder caches need room; consider more space or smaller keep_gb"}
	}
	return check{"ok", "disk", detail, ""}
}

func (d *doctor) serverCheck(ctx context.Context) check {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", d.apiURL+"/healthz", nil)
	if err != nil {
		return check{"fail", "server", err.Error(), "fix --api-url / KILN_API_URL"}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return check{"fail", "server", fmt.Sprintf("%s is not reachable: %v", d.apiURL, err), "start it with `kiln serve`, or set --api-url / KILN_API_URL"}
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		return check{"fail", "server", fmt.Sprintf("%s/healthz answered %s", d.apiURL, res.Status), "see the server log"}
	}
	if d.token == "" {
		return check{"warn", "server", d.apiURL + " is up, but no token is configured", "run `kiln login` or set KILN_TOKEN"}
	}
	return check{"ok", "server", d.apiURL + " is up", ""}
}

func printChecks(w io.Writer, checks []check) (failed bool) {
	marks := map[string]string{"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
	for _, c := range checks {
		fmt.Fprintf(w, "[%s] %-16s %s\n", marks[c.level], c.name, c.detail)
		if c.fix != "" {
			fmt.Fprintf(w, "       %-16s → %s\n", "", c.fix)
		}
		failed = failed || c.level == "fail"
	}
	return failed
}

func newDoctorCmd(g *globals) *cobra.Command {
	d := &doctor{}
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this machine and the server for what kiln needs",
		Long: `Check buildkitd and runc versions against known security fixes (and that runc
filters build steps' syscalls with seccomp; the runc checked is the one next to
buildkitd, which builders use first, else PATH's), kernel features
(overlayfs, user namespaces, binfmt for foreign platforms), disk space in the
data directory, and that the server answers. Each finding says what to do.
Exits non-zero only when something would stop builds from working.`,
		Example: `  kiln doctor
  kiln doctor --buildkitd /usr/local/bin/buildkitd --data /srv/kiln`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _ := g.config() // a missing token is itself a finding
			d.apiURL, d.token = cfg.APIURL, cfg.Token
			if d.apiURL == "" {
				d.apiURL = client.DefaultAPIURL
			}
			d.run = func(name string, args ...string) (string, error) {
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				defer cancel()
				out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
				return string(out), err
			}
			if printChecks(cmd.OutOrStdout(), d.checks(cmd.Context())) {
				return exitError(1)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&d.buildkitd, "buildkitd", cliflag.EnvOr("KILN_BUILDKITD", cliflag.DefaultBuildkitd()), "buildkitd binary to check")
	cmd.Flags().StringVar(&d.dataDir, "data", client.DefaultDataDir(), "data directory to check for disk space")
	return cmd
}
