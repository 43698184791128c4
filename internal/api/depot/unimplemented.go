package depot

import (
	"context"
	"errors"

	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	"connectrpc.com/connect"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
)

// errNoRegistry answers the Depot RPCs that need kiln's registry, which this
// version does not have yet. It is a deliberate, documented Unimplemented
// (README's compatibility table), not a missing route.
var errNoRegistry = connect.NewError(connect.CodeUnimplemented,
	errors.New("kiln's registry is not available in this version: save, pull and push through kiln's registry are not supported yet"))

// GetPullInfo is depot.cli.v1.BuildService/GetPullInfo (--load via registry).
func (s *CLIBuildService) GetPullInfo(context.Context, *connect.Request[cliv1extra.GetPullInfoRequest]) (*connect.Response[cliv1extra.GetPullInfoResponse], error) {
	return nil, errNoRegistry
}

// PushService is depot.cli.v1.PushService (depot push).
type PushService struct{}

func (PushService) StartPush(context.Context, *connect.Request[cliv1extra.StartPushRequest]) (*connect.Response[cliv1extra.StartPushResponse], error) {
	return nil, errNoRegistry
}

func (PushService) FinishPush(context.Context, *connect.Request[cliv1extra.FinishPushRequest]) (*connect.Response[cliv1extra.FinishPushResponse], error) {
	return nil, errNoRegistry
}

// RegistryService is depot.build.v1.RegistryService.
type RegistryService struct{}

func (RegistryService) ListImages(context.Context, *connect.Request[buildv1.ListImagesRequest]) (*connect.Response[buildv1.ListImagesResponse], error) {
	return nil, errNoRegistry
}

func (RegistryService) DeleteImage(context.Context, *connect.Request[buildv1.DeleteImageRequest]) (*connect.Response[buildv1.DeleteImageResponse], error) {
	return nil, errNoRegistry
}
