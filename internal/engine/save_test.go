package engine

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session/auth"
	"github.com/moby/buildkit/session/auth/authprovider"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
)

func TestDecodeRegistryCredential(t *testing.T) {
	tok := base64.StdEncoding.EncodeToString([]byte("x-token:kiln_bld_secret:with:colons"))
	c, err := DecodeRegistryCredential("127.0.0.1:7420", tok)
	if err != nil || c != (RegistryCredential{Host: "127.0.0.1:7420", Username: "x-token", Password: "kiln_bld_secret:with:colons"}) {
		t.Fatalf("DecodeRegistryCredential = %+v, %v", c, err)
	}
	for name, in := range map[string][2]string{
		"empty host":     {"", tok},
		"host with path": {"h/x", tok},
		"host with user": {"u@h", tok},
		"host newline":   {"h\n", tok},
		"not base64":     {"h", "!!!"},
		"no colon":       {"h", base64.StdEncoding.EncodeToString([]byte("justatoken"))},
		"empty user":     {"h", base64.StdEncoding.EncodeToString([]byte(":pw"))},
		"empty password": {"h", base64.StdEncoding.EncodeToString([]byte("u:"))},
		"huge token":     {"h", strings.Repeat("A", maxCredentialToken+4)},
		"huge host":      {strings.Repeat("h", 300), tok},
	} {
		if _, err := DecodeRegistryCredential(in[0], in[1]); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "kiln_bld") {
			t.Errorf("%s: error quotes the secret: %v", name, err)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for h, want := range map[string]bool{
		"127.0.0.1:7420": true, "127.1.2.3": true, "localhost:5000": true, "LOCALHOST": true, "[::1]:5000": true, "::1": true,
		"10.0.0.1:5000": false, "registry.example.com": false, "localhost.example.com:5000": false, "": false,
	} {
		if got := IsLoopbackHost(h); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v", h, got)
		}
	}
}

var testSaveCred = RegistryCredential{Host: "127.0.0.1:7420", Username: "x-token", Password: "kiln_bld_abc"}

func TestAddSave(t *testing.T) {
	r := mustPrepare(t, Options{ContextPath: kilntest.Context(t), Tags: []string{"app:dev"}, Load: false})
	refs := []string{"127.0.0.1:7420/proj:build1", "127.0.0.1:7420/proj:v1"}
	if err := r.AddSave(refs, []RegistryCredential{testSaveCred}); err != nil {
		t.Fatal(err)
	}
	exports, err := r.exportEntries(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(exports) != 1 || exports[0].Type != client.ExporterImage ||
		exports[0].Attrs["name"] != strings.Join(refs, ",") || exports[0].Attrs["push"] != "true" || exports[0].Attrs["registry.insecure"] != "true" {
		t.Errorf("save export = %+v", exports)
	}
	outs := r.Outputs()
	if len(outs) != 1 || !outs[0].Save || !outs[0].Push {
		t.Errorf("Outputs() = %+v", outs)
	}
	if !r.Pushes() {
		t.Error("a saved build does not report a push")
	}

	// A registry that is not on loopback is pushed to over TLS.
	r2 := mustPrepare(t, Options{ContextPath: kilntest.Context(t)})
	if err := r2.AddSave([]string{"kiln.example.com/proj:b"}, []RegistryCredential{{Host: "kiln.example.com", Username: "x-token", Password: "p"}}); err != nil {
		t.Fatal(err)
	}
	if e, _ := r2.exportEntries(nil); e[0].Attrs["registry.insecure"] != "" {
		t.Errorf("non-loopback save is insecure: %+v", e[0].Attrs)
	}
}

func TestAddSaveRefuses(t *testing.T) {
	cases := map[string]struct {
		refs  []string
		creds []RegistryCredential
	}{
		"no refs":                    {nil, []RegistryCredential{testSaveCred}},
		"ref without credentials":    {[]string{"ghcr.io/me/app:1"}, []RegistryCredential{testSaveCred}},
		"one of two without creds":   {[]string{"127.0.0.1:7420/p:1", "docker.io/me/app:1"}, []RegistryCredential{testSaveCred}},
		"untagged ref":               {[]string{"127.0.0.1:7420/p"}, []RegistryCredential{testSaveCred}},
		"malformed ref":              {[]string{"127.0.0.1:7420/P:1"}, []RegistryCredential{testSaveCred}},
		"credentials for other host": {[]string{"127.0.0.1:7420/p:1"}, []RegistryCredential{{Host: "127.0.0.1:7421", Username: "u", Password: "p"}}},
	}
	for name, c := range cases {
		r := mustPrepare(t, Options{ContextPath: kilntest.Context(t)})
		if err := r.AddSave(c.refs, c.creds); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if len(r.outputs) != 0 || len(r.registryAuth) != 0 {
			t.Errorf("%s: refused but changed the request", name)
		}
	}
	r := mustPrepare(t, Options{ContextPath: kilntest.Context(t), Call: "check"})
	if err := r.AddSave([]string{"127.0.0.1:7420/p:1"}, []RegistryCredential{testSaveCred}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("--save with --call: %v", err)
	}
}

// The session's auth provider answers the save host with the save
// credentials — even when the user's Docker config sends every host to a
// credential store, or has its own entry for that host — and every other
// host as the user's config does. Nothing is written to disk.
func TestLayerDockerConfig(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("DOCKER_AUTH_CONFIG", "")
	base := configfile.New(filepath.Join(dir, "config.json"))
	base.AuthConfigs["registry.example.com"] = types.AuthConfig{Username: "me", Password: "mine"}
	base.AuthConfigs["127.0.0.1:7420"] = types.AuthConfig{Username: "stale", Password: "old"}
	base.CredentialHelpers = map[string]string{"helped.example.com": "kiln-test-no-such-helper"}

	layered := layerDockerConfig(base, []RegistryCredential{testSaveCred})
	creds := func(cfg *configfile.ConfigFile, host string) (*auth.CredentialsResponse, error) {
		ap := authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{AuthConfigProvider: authprovider.LoadAuthConfig(cfg)}).(auth.AuthServer)
		return ap.Credentials(context.Background(), &auth.CredentialsRequest{Host: host})
	}
	got, err := creds(layered, "127.0.0.1:7420")
	if err != nil || got.Username != "x-token" || got.Secret != "kiln_bld_abc" {
		t.Errorf("save host: %+v, %v", got, err)
	}
	if got, err := creds(layered, "registry.example.com"); err != nil || got.Username != "me" || got.Secret != "mine" {
		t.Errorf("user's host: %+v, %v", got, err)
	}
	// With a global credsStore (a helper that does not exist here), the
	// save host still answers from memory.
	base.CredentialsStore = "kiln-test-no-such-store"
	layered = layerDockerConfig(base, []RegistryCredential{testSaveCred})
	if got, err := creds(layered, "127.0.0.1:7420"); err != nil || got.Secret != "kiln_bld_abc" {
		t.Errorf("save host with a credsStore: %+v, %v", got, err)
	}
	// The base is untouched, the layer cannot be saved, and no file exists.
	if base.AuthConfigs["127.0.0.1:7420"].Password != "old" || len(base.CredentialHelpers) != 1 {
		t.Errorf("base changed: %+v %+v", base.AuthConfigs, base.CredentialHelpers)
	}
	if err := layered.Save(); err == nil {
		t.Error("the layered config could be saved")
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		t.Error("a Docker config file was written")
	}
	if layerDockerConfig(base, nil) != base {
		t.Error("no credentials should leave the config as it is")
	}
}

func TestRequestKeychain(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	r := mustPrepare(t, Options{ContextPath: kilntest.Context(t)})
	if r.keychain() != authn.DefaultKeychain {
		t.Error("no --save: want the default keychain")
	}
	if err := r.AddSave([]string{"127.0.0.1:7420/p:1"}, []RegistryCredential{testSaveCred}); err != nil {
		t.Fatal(err)
	}
	resolve := func(host string) authn.AuthConfig {
		reg, _ := name.NewRegistry(host)
		a, err := r.keychain().Resolve(reg)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := a.Authorization()
		return *cfg
	}
	if c := resolve("127.0.0.1:7420"); c.Username != "x-token" || c.Password != "kiln_bld_abc" {
		t.Errorf("save host: %+v", c)
	}
	if c := resolve("registry.example.com"); c.Username != "" || c.Password != "" {
		t.Errorf("other host: %+v", c)
	}
}
