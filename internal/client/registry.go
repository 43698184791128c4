package client

import (
	"net/http"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// RegistryAdmin is a kiln.v1.RegistryAdminService client.
func (c Config) RegistryAdmin() kilnv1connect.RegistryAdminServiceClient {
	return kilnv1connect.NewRegistryAdminServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
