package client

import (
	"net/http"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// ProjectNetwork is a kiln.v1.ProjectNetworkService client (a project's
// egress allow-list).
func (c Config) ProjectNetwork() kilnv1connect.ProjectNetworkServiceClient {
	return kilnv1connect.NewProjectNetworkServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
