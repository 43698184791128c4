package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/server"
)

const isolationServeExample = `
  kiln serve --tls auto    # TLS only; clients trust DATA/pki/ca.crt (SSL_CERT_FILE)
  kiln serve --addr 0.0.0.0:7420 --tls-cert /etc/kiln/tls.crt --tls-key /etc/kiln/tls.key
  kiln serve --builder-subnets 10.64.0.0/16 --builder-env HTTPS_PROXY --builder-env NO_PROXY`

// prefixValue is a netip.Prefix flag.
type prefixValue struct{ p *netip.Prefix }

func (v prefixValue) String() string {
	if v.p == nil || !v.p.IsValid() {
		return ""
	}
	return v.p.String()
}

func (v prefixValue) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("want a CIDR such as 10.200.0.0/16")
	}
	*v.p = p
	return nil
}

func (prefixValue) Type() string { return "cidr" }

// registerIsolationFlags adds kiln serve's TLS and builder-isolation flags.
func registerIsolationFlags(f *pflag.FlagSet, cfg *server.Config) {
	f.StringVar(&cfg.TLS, "tls", cliflag.EnvOr("KILN_TLS", ""), "'auto': serve TLS only, with a certificate from kiln's own CA (clients trust DATA/pki/ca.crt); "+
		"default: plain HTTP for clients on loopback plus TLS on the same port (env KILN_TLS). Use TLS whenever clients are not on this machine")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "serve TLS only, with this certificate (PEM, with its chain); needs --tls-key")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.Var(prefixValue{&cfg.BuilderNetwork.Pool}, "builder-subnets", "private IPv4 range the builders' RUN-step networks (a /24 each) come from (default 10.200.0.0/16)")
	f.StringVar(&cfg.BuilderNetwork.CNIBinDir, "cni-bin-dir", "", "directory of the CNI plugins (default /usr/lib/cni or /opt/cni/bin)")
	f.StringArrayVar(&cfg.BuilderEnv, "builder-env", nil, "name of a variable of kiln's environment builders get, e.g. HTTPS_PROXY (repeatable); nothing else of kiln's environment reaches them")
}

// resolveTLS turns the TLS flags into one mode.
func resolveTLS(cfg *server.Config) error {
	if cfg.TLSCert == "" && cfg.TLSKey == "" {
		return nil
	}
	if cfg.TLS != "" {
		return fmt.Errorf("--tls %s and --tls-cert/--tls-key: choose one", cfg.TLS)
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" {
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	cfg.TLS = server.TLSFiles
	return nil
}
