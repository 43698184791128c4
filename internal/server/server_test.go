package server

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/builder"
)

// TestNewReleasesOnLateFailure makes New's last step fail (a missing
// --push-auth-file, read after the fleet, the registry and the blob store
// are open) and checks that what the earlier steps opened was released: the
// builder fleet's network pool, which a leaked fleet keeps locked, can be
// claimed again by a second New in this process.
func TestNewReleasesOnLateFailure(t *testing.T) {
	data := t.TempDir()
	cfg := Config{
		DataDir:       data,
		Addr:          "127.0.0.1:0",
		BuildkitdPath: "/bin/true",
		// A pool no other test or server uses: its lock is per machine.
		// Outside 10.128.0.0/9, where the e2e servers (which may run at
		// the same time) draw their pools.
		BuilderNetwork: builder.Network{Pool: netip.MustParsePrefix("10.77.0.0/16")},
		Source:         SourceConfig{PushAuthFile: filepath.Join(data, "missing-config.json")},
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for i := range 2 {
		s, err := New(context.Background(), cfg)
		if err == nil {
			t.Fatalf("New #%d with a missing --push-auth-file succeeded: %+v", i+1, s)
		}
		if !strings.Contains(err.Error(), "--push-auth-file") {
			t.Fatalf("New #%d: %v; want the --push-auth-file error (the first New's fleet still holds the network pool?)", i+1, err)
		}
	}
}

// A wrong builder driver or Kubernetes flag is refused at start, naming
// the flag and what it wants; nothing is left running.
func TestKubeFlagsRefused(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: "x"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"driver", func(c *Config) { c.BuilderDriver = "docker" }, `--builder-driver "docker": want local or kubernetes`},
		{"no cluster", func(c *Config) { c.BuilderDriver = DriverKubernetes }, "--kube-config"},
		{"no image", func(c *Config) { c.BuilderDriver = DriverKubernetes; c.Kube.Kubeconfig = kubeconfig }, "--kube-builder-image"},
		{"pull policy", func(c *Config) {
			c.BuilderDriver, c.Kube = DriverKubernetes, KubeConfig{Kubeconfig: kubeconfig, Image: "i", PullPolicy: "Sometimes"}
		}, "--kube-pull-policy"},
		{"volume size", func(c *Config) {
			c.BuilderDriver, c.Kube = DriverKubernetes, KubeConfig{Kubeconfig: kubeconfig, Image: "i", VolumeSize: "-3Gi"}
		}, "--kube-volume-size"},
		{"gateway cidr", func(c *Config) {
			c.BuilderDriver, c.Kube = DriverKubernetes, KubeConfig{Kubeconfig: kubeconfig, Image: "i", GatewayFrom: []string{"10.0.0.0/33"}}
		}, "--kube-gateway-from"},
		{"unreachable cluster", func(c *Config) {
			c.BuilderDriver, c.Kube = DriverKubernetes, KubeConfig{Kubeconfig: kubeconfig, Image: "i"}
		}, "kube"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), Addr: "127.0.0.1:0", BuildkitdPath: "/bin/true",
				BuilderNetwork: builder.Network{Pool: netip.MustParsePrefix("10.78.0.0/16")},
				Logger:         slog.New(slog.NewTextHandler(io.Discard, nil))}
			tc.set(&cfg)
			s, err := New(context.Background(), cfg)
			if err == nil {
				s.release(context.Background())
				t.Fatalf("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v; want it to name %q", err, tc.want)
			}
		})
	}
}
