package depot

import (
	"log/slog"
	"net/http"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/build/v1/buildv1connect"
	"buf.build/gen/go/depot/api/connectrpc/go/depot/buildkit/v1/buildkitv1connect"
	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	"connectrpc.com/connect"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"

	"github.com/kiln-dev/kiln/gen/depot/cli/v1/cliv1extraconnect"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
)

// Mount registers every Depot service on mux. opts carry the interceptors
// (authentication, logging) every handler runs behind.
func Mount(mux *http.ServeMux, projects *project.Service, builds *build.Service, logger *slog.Logger, opts ...connect.HandlerOption) {
	mux.Handle(corev1connect.NewProjectServiceHandler(&ProjectService{Projects: projects, Logger: logger}, opts...))
	mux.Handle(corev1connect.NewBuildServiceHandler(&CoreBuildService{Builds: builds, Logger: logger}, opts...))
	mux.Handle(corev1connect.NewOrganizationServiceHandler(&OrganizationService{Projects: projects, Logger: logger}, opts...))
	mux.Handle(corev1connect.NewUsageServiceHandler(&UsageService{Projects: projects, Builds: builds, Logger: logger}, opts...))
	// ShareBuild's links, GET /shared/{token} (SharePage), are mounted by
	// the server with the dashboard's page for browsers.

	cli := &CLIBuildService{Builds: builds, Projects: projects, Logger: logger}
	mux.Handle(cliv1connect.NewBuildServiceHandler(cli, opts...))
	// depot-go's generated service lacks these methods of depot.cli.v1.BuildService;
	// the more specific paths take precedence over the service prefix.
	const svc = "/depot.cli.v1.BuildService/"
	mux.Handle(svc+"GetBuild", connect.NewUnaryHandler(svc+"GetBuild", cli.GetBuild, opts...))
	mux.Handle(svc+"ReportStatus", connect.NewUnaryHandler(svc+"ReportStatus", cli.ReportStatus, opts...))
	mux.Handle(svc+"ReportStatusStream", connect.NewClientStreamHandler(svc+"ReportStatusStream", cli.ReportStatusStream, opts...))
	mux.Handle(svc+"GetPullInfo", connect.NewUnaryHandler(svc+"GetPullInfo", cli.GetPullInfo, opts...))
	mux.Handle(cliv1extraconnect.NewPushServiceHandler(&PushService{Builds: builds, Logger: logger}, opts...))
	// depot.build.v1.RegistryService is mounted by the server with kiln's
	// registry (internal/server/registry.go).

	mux.Handle(buildv1connect.NewBuildServiceHandler(&PublicBuildService{Builds: builds, Logger: logger}, opts...))
	mux.Handle(buildkitv1connect.NewBuildKitServiceHandler(&BuildKitService{Builds: builds, Logger: logger}, opts...))
}
