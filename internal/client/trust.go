package client

import (
	"net/http"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// TrustPolicies is a kiln.v1.TrustPolicyService client.
func (c Config) TrustPolicies() kilnv1connect.TrustPolicyServiceClient {
	return kilnv1connect.NewTrustPolicyServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}

// Tokens is a kiln.v1.TokenService client.
func (c Config) Tokens() kilnv1connect.TokenServiceClient {
	return kilnv1connect.NewTokenServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
