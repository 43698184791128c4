package builder

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	bkconfig "github.com/moby/buildkit/cmd/buildkitd/config"
)

// kiln's own registry is reached over TLS with kiln's CA, even on
// loopback (where BuildKit would otherwise speak plain HTTP).
func TestRenderConfigOwnRegistryTLS(t *testing.T) {
	own := OwnRegistry{Host: "127.0.0.1:7420", CAFiles: []string{"/data/pki/ca.crt", "/etc/kiln/tls.crt"}}
	b, err := renderConfig(Spec{}, []string{"r.local:5000"}, own, testNet)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := bkconfig.Load(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	r, ok := cfg.Registries["127.0.0.1:7420"]
	if !ok || r.PlainHTTP == nil || *r.PlainHTTP || len(r.RootCAs) != 2 || r.RootCAs[0] != "/data/pki/ca.crt" {
		t.Fatalf("kiln's registry: %+v\n%s", r, b)
	}
	// An operator who insists on --insecure-registry for it wins (BuildKit
	// would refuse two tables for one host).
	b, err = renderConfig(Spec{}, []string{"127.0.0.1:7420"}, own, testNet)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err = bkconfig.Load(strings.NewReader(string(b))); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if r := cfg.Registries["127.0.0.1:7420"]; r.PlainHTTP == nil || !*r.PlainHTTP {
		t.Fatalf("--insecure-registry lost: %+v", r)
	}
}

// kiln serve --insecure-registry reaches buildkitd as [registry."host"]
// http = true, which BuildKit's own loader reads as plain HTTP.
func TestRenderConfigInsecureRegistries(t *testing.T) {
	regs := []string{"127.0.0.1:5000", "kiln.internal", "::1"}
	b, err := renderConfig(Spec{KeepBytes: 1 << 30, KeepDuration: time.Hour}, regs, OwnRegistry{}, testNet)
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
