package builder

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	bkconfig "github.com/moby/buildkit/cmd/buildkitd/config"
)

// kiln serve --insecure-registry reaches buildkitd as [registry."host"]
// http = true, which BuildKit's own loader reads as plain HTTP.
func TestRenderConfigInsecureRegistries(t *testing.T) {
	regs := []string{"127.0.0.1:5000", "kiln.internal", "::1"}
	b, err := renderConfig(Spec{KeepBytes: 1 << 30, KeepDuration: time.Hour}, regs)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := bkconfig.Load(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if len(cfg.Registries) != len(regs) {
		t.Fatalf("registries %v\n%s", cfg.Registries, b)
	}
	for _, h := range regs {
		r, ok := cfg.Registries[h]
		if !ok || r.PlainHTTP == nil || !*r.PlainHTTP {
			t.Errorf("registry %q: %+v (present %v)\n%s", h, r, ok, b)
		}
	}
	// The rest of the file is unchanged by the registries.
	if oci := cfg.Workers.OCI; oci.Enabled == nil || !*oci.Enabled || len(oci.GCPolicy) != 4 {
		t.Errorf("oci worker changed: %+v", oci)
	}
	if len(cfg.Entitlements) != 0 {
		t.Errorf("entitlements %v", cfg.Entitlements)
	}
}

// A registry name is written into buildkitd.toml: anything but a plain
// host[:port] is refused, so a flag value cannot rewrite the builder's
// configuration (entitlements, workers).
func TestCheckRegistryHost(t *testing.T) {
	for _, ok := range []string{"localhost", "localhost:5000", "127.0.0.1:5000", "registry.kiln.internal:443", "::1", "a-b.c"} {
		if err := checkRegistryHost(ok); err != nil {
			t.Errorf("checkRegistryHost(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "http://127.0.0.1:5000", "127.0.0.1:5000/v2", "host:0", "host:65536", "host:port", "a b",
		"evil\"]\ninsecure-entitlements = [\"security.insecure\"]\n[x", "host\n", "-host", "host-", "a..b", "[::1", "[::1]:5000", "h:1:2x",
		strings.Repeat("a", 64) + ".com",
	} {
		err := checkRegistryHost(bad)
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("checkRegistryHost(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
