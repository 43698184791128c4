// Package spec describes one builder to the code that asks for it: which
// builder a build wants (Spec) and how the build reaches it (Endpoint).
// The fleet that runs builders (internal/builder) takes and returns these;
// they live apart from it so that the build domain can name them without
// depending on BuildKit, gRPC or processes. It depends on nothing of kiln.
package spec

import (
	"net/netip"
	"time"
)

// Spec says which builder is wanted, how its cache is collected and where
// its RUN steps may connect.
type Spec struct {
	ProjectID    string
	Platform     string        // "linux/amd64" or "linux/arm64" (any "linux/<arch>[/<variant>]" is accepted)
	KeepBytes    int64         // GC: cache size cap; 0 → builder.DefaultKeepBytes (10 GiB)
	KeepDuration time.Duration // GC: keep cache records this long; 0 → builder.DefaultKeepDuration (14 days)
	// EgressAllow are private destinations the operator lets this
	// project's RUN steps reach (a package mirror); see
	// internal/builder/network.go. Applied at once, also to a running
	// builder.
	EgressAllow []netip.Prefix
	// Hardware is the project's size in Depot's terms (its
	// depot.core.v1.Hardware value: 0 unspecified, 1 16x32, 2 4x4, ...).
	// The local driver ignores it; the Kubernetes driver turns it into
	// the builder pod's resources.
	Hardware int32
}

// Endpoint is how a build reaches a builder. buildkitd serves only Socket,
// a unix socket on kiln's machine; clients reach it through kiln's builder
// gateway (internal/gateway) at the control plane's address, asking for
// ServerName and verifying the gateway's certificate against CACertPEM. They
// present a certificate from pki.Authority.IssueClient for the same project.
type Endpoint struct {
	ServerName string // TLS name the gateway routes by, e.g. "<project>-amd64.builder.kiln"
	CACertPEM  string // the project CA: clients verify the gateway with it
	Socket     string // buildkitd's unix socket (plain gRPC): the gateway's side, never handed out
}
