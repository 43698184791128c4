package client

import (
	"net/http"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// Audit is a kiln.v1.AuditService client (`kiln audit`).
func (c Config) Audit() kilnv1connect.AuditServiceClient {
	return kilnv1connect.NewAuditServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
