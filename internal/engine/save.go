package engine

import (
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// RegistryCredential is a user name and password for one registry host.
// It lives in memory for one build and is never written to disk.
type RegistryCredential struct {
	// Host is the registry as image references name it: host[:port].
	Host     string
	Username string
	Password string
}

// maxCredentialToken bounds a credential token read from the server.
const maxCredentialToken = 16 << 10

// DecodeRegistryCredential reads one of CreateBuild's
// additional_credentials: host, and token = base64("user:password") (a
// Docker config "auth" value; kiln sends "x-token:<build token>").
func DecodeRegistryCredential(host, token string) (RegistryCredential, error) {
	if host == "" || strings.ContainsAny(host, "/@ \t\r\n") || len(host) > 255 {
		return RegistryCredential{}, fmt.Errorf("registry credential: %q is not a registry host[:port]", clip(host, 80))
	}
	if len(token) > maxCredentialToken {
		return RegistryCredential{}, fmt.Errorf("registry credential for %s: token longer than %d bytes", host, maxCredentialToken)
	}
	raw, err := base64.StdEncoding.DecodeString(token)
	if err != nil {
		return RegistryCredential{}, fmt.Errorf("registry credential for %s: token is not base64: %w", host, err)
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok || user == "" || pass == "" {
		return RegistryCredential{}, fmt.Errorf("registry credential for %s: token is not base64 of \"user:password\"", host)
	}
	return RegistryCredential{Host: host, Username: user, Password: pass}, nil
}

// IsLoopbackHost reports whether a registry host[:port] is on this machine
// (localhost or a loopback address), where registries speak plain HTTP.
func IsLoopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// AddSave adds --save's output to a prepared build: the result is pushed
// to refs (CreateBuild's additional tags, e.g. 127.0.0.1:7420/<project>:<build
// id>), one image index for a multi-platform build, with the attestations
// BuildKit attaches to pushed images. The builder authenticates to their
// registry with creds — served over the build's session in place of the
// user's Docker credentials for that host (see [layerDockerConfig]); loopback
// registries are pushed to over plain HTTP. Every ref's registry must have a
// credential: a server cannot make the CLI push the build anywhere with the
// user's own credentials.
func (r *Request) AddSave(refs []string, creds []RegistryCredential) error {
	if r.call != nil {
		return errdefs.Invalidf("--save: --call runs a frontend method and builds nothing to save")
	}
	if len(refs) == 0 {
		return fmt.Errorf("--save: the server named no image to save to")
	}
	hosts := map[string]bool{}
	for _, c := range creds {
		hosts[c.Host] = true
	}
	loopback := true
	for _, ref := range refs {
		named, err := reference.ParseNormalizedNamed(ref)
		if err != nil {
			return fmt.Errorf("--save: the server's image name %q: %w", clip(ref, 200), err)
		}
		if _, ok := named.(reference.Tagged); !ok {
			return fmt.Errorf("--save: the server's image name %q has no tag", clip(ref, 200))
		}
		domain := reference.Domain(named)
		if !hosts[domain] {
			return fmt.Errorf("--save: the server asked to save to %s without credentials for that registry; refusing", domain)
		}
		loopback = loopback && IsLoopbackHost(domain)
	}
	o := &outputSpec{Output: buildreq.Output{Type: client.ExporterImage, Attrs: map[string]string{"name": strings.Join(refs, ","), "push": "true"}},
		flag: "--save", save: true}
	if loopback {
		o.Attrs["registry.insecure"] = "true"
	}
	r.outputs = append(r.outputs, o)
	for _, c := range creds {
		if !slices.Contains(r.registryAuth, c) {
			r.registryAuth = append(r.registryAuth, c)
		}
	}
	return nil
}

// layerDockerConfig returns base with creds layered over it, for the
// session's auth provider: each credential's host answers with that user
// and password, every other host as base does (its auths, credsStore and
// credential helpers). base is not modified. The copy has no file name, so
// nothing can save it (and the credentials) to disk.
//
// A host's entry in credHelpers, and the global credsStore, would take
// precedence over auths; the layer maps the host to no helper (""), which
// the Docker config reads as "use auths".
func layerDockerConfig(base *configfile.ConfigFile, creds []RegistryCredential) *configfile.ConfigFile {
	if len(creds) == 0 {
		return base
	}
	c := *base
	c.Filename = ""
	c.AuthConfigs = make(map[string]types.AuthConfig, len(base.AuthConfigs)+len(creds))
	for k, v := range base.AuthConfigs {
		c.AuthConfigs[k] = v
	}
	c.CredentialHelpers = make(map[string]string, len(base.CredentialHelpers)+len(creds))
	for k, v := range base.CredentialHelpers {
		c.CredentialHelpers[k] = v
	}
	for _, cr := range creds {
		c.AuthConfigs[cr.Host] = types.AuthConfig{Username: cr.Username, Password: cr.Password, ServerAddress: cr.Host}
		c.CredentialHelpers[cr.Host] = ""
	}
	return &c
}

// keychain is what the client itself authenticates with (the index push of
// a multi-platform build): the save credentials for their hosts, the
// user's Docker credentials for the rest.
func (r *Request) keychain() authn.Keychain {
	if len(r.registryAuth) == 0 {
		return r.baseKeychain()
	}
	return authn.NewMultiKeychain(staticKeychain(r.registryAuth), r.baseKeychain())
}

// staticKeychain answers for the hosts it holds and is anonymous (so a
// multi-keychain asks the next one) for the others.
type staticKeychain []RegistryCredential

func (k staticKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	for _, c := range k {
		if c.Host == res.RegistryStr() {
			return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password}), nil
		}
	}
	return authn.Anonymous, nil
}

// clip shortens untrusted text quoted back in an error.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
