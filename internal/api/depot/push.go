package depot

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1/cliv1extraconnect"
	"github.com/kiln-dev/kiln/internal/build"
)

// PushService is depot.cli.v1.PushService: `depot push` and `kiln push`
// report the pushes of a saved build to other registries. The client
// copies the image; kiln records each push as a step of the build (see
// build.Service.StartPush).
type PushService struct {
	Builds *build.Service
	Logger *slog.Logger
}

var _ cliv1extraconnect.PushServiceHandler = (*PushService)(nil)

func (s *PushService) StartPush(ctx context.Context, req *connect.Request[cliv1extra.StartPushRequest]) (*connect.Response[cliv1extra.StartPushResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.Builds.StartPush(ctx, p, req.Msg.BuildId, req.Msg.Tag)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&cliv1extra.StartPushResponse{PushId: id}), nil
}

func (s *PushService) FinishPush(ctx context.Context, req *connect.Request[cliv1extra.FinishPushRequest]) (*connect.Response[cliv1extra.FinishPushResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Builds.FinishPush(ctx, p, req.Msg.BuildId, req.Msg.PushId, req.Msg.Error); err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&cliv1extra.FinishPushResponse{}), nil
}
