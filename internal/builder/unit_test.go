package builder

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bkconfig "github.com/moby/buildkit/cmd/buildkitd/config"
)

var testNet = workerSettings{CNIBinDir: "/usr/lib/cni", Bridge: "k0ac800-3", Subnet: "10.200.3.0/24", CgroupParent: "/kiln/0123456789abcdef/p1-amd64"}

// The rendered file must mean to BuildKit's own config loader what we think.
func TestRenderConfigParsesAsBuildKit(t *testing.T) {
	b, err := renderConfig(Spec{KeepBytes: 5 << 30, KeepDuration: 36 * time.Hour}, nil, OwnRegistry{}, testNet)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := bkconfig.Load(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	oci := cfg.Workers.OCI
	if oci.Enabled == nil || !*oci.Enabled || oci.Snapshotter != "overlayfs" || oci.GC == nil || !*oci.GC {
		t.Fatalf("oci worker: %+v", oci)
	}
	// RUN steps never get the host's network: bridge mode on the builder's
	// own bridge and subnet.
	if n := oci.NetworkConfig; n.Mode != "bridge" || n.BridgeName != testNet.Bridge || n.BridgeSubnet != testNet.Subnet || n.CNIBinaryPath != testNet.CNIBinDir {
		t.Fatalf("network: %+v", n)
	}
	// RUN steps go below the builder's cgroup.
	if oci.DefaultCgroupParent != testNet.CgroupParent {
		t.Fatalf("defaultCgroupParent %q, want %q", oci.DefaultCgroupParent, testNet.CgroupParent)
	}
	if e := cfg.Workers.Containerd.Enabled; e == nil || *e {
		t.Fatal("containerd worker not disabled")
	}
	if len(cfg.Entitlements) != 0 {
		t.Fatalf("entitlements %v", cfg.Entitlements)
	}
	want := []bkconfig.GCPolicy{
		{Filters: []string{"type==source.local", "type==exec.cachemount", "type==source.git.checkout"},
			KeepDuration: bkconfig.Duration{Duration: 36 * time.Hour}, MaxUsedSpace: bkconfig.DiskSpace{Bytes: 512 << 20}},
		{KeepDuration: bkconfig.Duration{Duration: 36 * time.Hour}},
		{MaxUsedSpace: bkconfig.DiskSpace{Bytes: 5 << 30}},
		{All: true, MaxUsedSpace: bkconfig.DiskSpace{Bytes: 5 << 30}},
	}
	got := oci.GCPolicy
	if len(got) != len(want) {
		t.Fatalf("gc policy %+v\n%s", got, b)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.All != w.All || strings.Join(g.Filters, ",") != strings.Join(w.Filters, ",") ||
			g.KeepDuration != w.KeepDuration || g.MaxUsedSpace != w.MaxUsedSpace {
			t.Errorf("rule %d: got %+v want %+v", i, g, w)
		}
	}
}

func TestParsePlatform(t *testing.T) {
	for in, want := range map[string][2]string{
		"linux/amd64":    {"linux/amd64", "amd64"},
		"linux/arm64":    {"linux/arm64", "arm64"},
		"linux/arm64/v8": {"linux/arm64", "arm64"},
		"linux/arm/v7":   {"linux/arm/v7", "arm-v7"},
	} {
		p, a, ok := parsePlatform(in)
		if !ok || p != want[0] || a != want[1] {
			t.Errorf("parsePlatform(%q) = %q, %q, %v", in, p, a, ok)
		}
	}
	for _, in := range []string{"", "amd64", "darwin/arm64", "linux/../x", "linux/AMD64", "linux/arm/7"} {
		if _, _, ok := parsePlatform(in); ok {
			t.Errorf("parsePlatform(%q) accepted", in)
		}
	}
}

func TestSocketDir(t *testing.T) {
	short := "/var/lib/kiln/builders/p/amd64"
	if got := socketDir(short); got != short {
		t.Errorf("short dir moved to %s", got)
	}
	long := "/" + strings.Repeat("d", 100) + "/p/amd64"
	got := socketDir(long)
	if got == long || len(filepath.Join(got, "otel-grpc.sock")) > maxSocketPath {
		t.Errorf("long dir → %s", got)
	}
	if socketDir(long) != got {
		t.Error("not stable")
	}
	_ = os.Remove(got)
}

func TestMountinfoHelpers(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("unescape: %q", got)
	}
	if !isUnder("/a/b", "/a") || !isUnder("/a", "/a") || isUnder("/ab", "/a") {
		t.Error("isUnder")
	}
}

// The disk watch sees the marker wherever buildkitd's writes split it, and
// fires once.
func TestDiskFullWatch(t *testing.T) {
	hits := 0
	w := &diskFullWatch{onHit: func() { hits++ }}
	for _, chunk := range []string{"time=... level=error msg=\"write /x: no sp", "ace left on", " device\"\n", "again: no space left on device\n"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if hits != 1 {
		t.Fatalf("%d hits, want 1", hits)
	}
	quiet := &diskFullWatch{onHit: func() { t.Fatal("hit without the marker") }}
	for i := 0; i < 100; i++ {
		quiet.Write([]byte("no space left on the bus, device busy\n"))
	}
}
