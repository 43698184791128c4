package main

import (
	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/cliflag"
)

// oidcServeExample shows the OIDC flags in `kiln serve --help`.
const oidcServeExample = `
  # CI jobs authenticate with their OIDC token (see 'kiln trust-policies --help');
  # a GitHub Enterprise Server and a self-hosted GitLab instead of the public ones:
  kiln serve --oidc-github-issuer https://ghe.example.com/_services/token \
    --oidc-gitlab-issuer https://gitlab.example.com --oidc-audience kiln`

// registerOIDCFlags adds `kiln serve`'s flags for CI providers' OIDC tokens.
func registerOIDCFlags(f *pflag.FlagSet, cfg *oidc.Config) {
	f.StringVar(&cfg.Audience, "oidc-audience", cliflag.EnvOr("KILN_OIDC_AUDIENCE", oidc.DefaultAudience),
		"audience CI jobs request their OIDC token for (the aud claim must contain it; env KILN_OIDC_AUDIENCE)")
	f.StringVar(&cfg.GitHubIssuer, "oidc-github-issuer", oidc.DefaultGitHubIssuer,
		`GitHub Actions OIDC issuer (GitHub Enterprise Server: https://HOST/_services/token); "" disables`)
	f.StringVar(&cfg.GitLabIssuer, "oidc-gitlab-issuer", oidc.DefaultGitLabIssuer,
		`GitLab OIDC issuer (self-hosted: the instance URL, e.g. https://gitlab.example.com); "" disables`)
	f.StringVar(&cfg.BuildkiteIssuer, "oidc-buildkite-issuer", oidc.DefaultBuildkiteIssuer,
		`Buildkite OIDC issuer; "" disables`)
	f.StringVar(&cfg.CircleCIIssuerPrefix, "oidc-circleci-issuer-prefix", oidc.DefaultCircleCIIssuerPrefix,
		`CircleCI OIDC issuers: this prefix + an organization id; "" disables`)
	f.DurationVar(&cfg.MinRefresh, "oidc-jwks-min-refresh", 0,
		"least time between two fetches of one issuer's signing keys when a token names an unknown key (0: 10s)")
	f.DurationVar(&cfg.RefreshInterval, "oidc-jwks-refresh", 0,
		"how often an issuer's signing keys are fetched again while its tokens arrive, so a key it removed stops working (0: 5m)")
}
