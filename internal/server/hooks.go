package server

import (
	"context"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/gateway"
)

// The project service's hooks into the rest of the control plane (and
// peer.go's, which take them to every replica).

// revoker ends what deleted tokens, trust policies and projects still
// hold: the builds a token created or a policy's CI jobs started, the
// project's builder connections.
type revoker struct {
	builds  *build.Service
	gateway *gateway.Gateway
}

func (r revoker) TokenDeleted(ctx context.Context, tokenID string) error {
	return r.builds.EndCreatedBy(ctx, tokenID)
}

func (r revoker) PolicyRemoved(ctx context.Context, policyID string) error {
	return r.builds.EndAdmittedBy(ctx, policyID)
}

func (r revoker) ProjectDeleted(_ context.Context, projectID string) {
	r.gateway.RevokeProject(projectID)
}
