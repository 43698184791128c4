package server

import (
	"context"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/gateway"
)

// The project service's hooks into the rest of the control plane.

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

// egressApplier hands a project's changed allow-list to its running
// builders.
type egressApplier struct{ fleet *builder.Fleet }

func (e egressApplier) SetEgressAllow(projectID string, cidrs []string) error {
	return e.fleet.SetEgressAllow(projectID, build.EgressPrefixes(cidrs))
}
