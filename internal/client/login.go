package client

import (
	"fmt"
	"net/http"
	"os"
	"strings"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// ResolveAPIURL picks the API URL alone (flag, KILN_API_URL, DEPOT_API_URL,
// the login file, the default), for commands that run without a token.
func ResolveAPIURL(apiURLFlag string) (string, error) {
	u := firstNonEmpty(apiURLFlag, os.Getenv("KILN_API_URL"), os.Getenv("DEPOT_API_URL"), ReadLogin().APIURL, DefaultAPIURL)
	u = strings.TrimRight(u, "/")
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return u, fmt.Errorf("API URL %q must start with http:// or https://", u)
	}
	return u, nil
}

// LoginService is a depot.cli.v1beta1.LoginService client for apiURL. It
// sends no token: the device login is how a client without one gets one.
func LoginService(apiURL string) cliv1beta1connect.LoginServiceClient {
	return cliv1beta1connect.NewLoginServiceClient(http.DefaultClient, apiURL, connect.WithInterceptors(reachability(apiURL)))
}

// CLIProjects is a depot.cli.v1beta1.ProjectsService client.
func (c Config) CLIProjects() cliv1beta1connect.ProjectsServiceClient {
	return cliv1beta1connect.NewProjectsServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}

// LoginAdmin is a kiln.v1.LoginAdminService client (approve or deny logins).
func (c Config) LoginAdmin() kilnv1connect.LoginAdminServiceClient {
	return kilnv1connect.NewLoginAdminServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}
