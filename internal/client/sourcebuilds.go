package client

import (
	"net/http"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// SourceBuilds is a kiln.v1.SourceBuildService client: builds kiln runs
// from an uploaded context (kiln build --detach, kiln builds).
func (c Config) SourceBuilds() kilnv1connect.SourceBuildServiceClient {
	return kilnv1connect.NewSourceBuildServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
