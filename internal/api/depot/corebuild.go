package depot

import (
	"context"
	"log/slog"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/build"
)

// CoreBuildService serves depot.core.v1.BuildService: listing builds,
// their statistics, and share links.
type CoreBuildService struct {
	Builds *build.Service
	Logger *slog.Logger
}

var _ corev1connect.BuildServiceHandler = (*CoreBuildService)(nil)

// coreStatus maps kiln's build statuses. STATUS_ERROR is not used: kiln
// does not tell a build that failed from one whose infrastructure failed
// (a lost builder fails the build with a message saying so).
// Depot has no queued or pushing status: a source build waiting for its
// turn or pushing its image reads as running.
var coreStatus = map[build.Status]corev1.Build_Status{
	build.Queued:    corev1.Build_STATUS_RUNNING,
	build.Running:   corev1.Build_STATUS_RUNNING,
	build.Pushing:   corev1.Build_STATUS_RUNNING,
	build.Succeeded: corev1.Build_STATUS_SUCCESS,
	build.Failed:    corev1.Build_STATUS_FAILED,
	build.Canceled:  corev1.Build_STATUS_CANCELED,
}

// coreBuild is the wire form of a build. stats is nil in listings, which
// leave the step counts and durations that need the steps unset.
func coreBuild(b build.Build, stats *build.Stats) *corev1.Build {
	out := &corev1.Build{
		BuildId:    b.ID,
		Status:     coreStatus[b.Status],
		CreatedAt:  timestamppb.New(b.CreatedAt),
		StartedAt:  tsOrNil(b.StartedAt),
		FinishedAt: tsOrNil(b.FinishedAt),
	}
	if b.Terminal() {
		out.BuildDurationSeconds = proto.Int32(build.Seconds(build.BuildTime(b)))
	}
	if stats != nil {
		out.SavedDurationSeconds = proto.Int32(build.Seconds(stats.Saved))
		out.CachedSteps = proto.Int32(int32(min(stats.CachedSteps, 1<<31-1)))
		out.TotalSteps = proto.Int32(int32(min(stats.TotalSteps, 1<<31-1)))
	}
	return out
}

func (s *CoreBuildService) ListBuilds(ctx context.Context, req *connect.Request[corev1.ListBuildsRequest]) (*connect.Response[corev1.ListBuildsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	builds, next, err := s.Builds.Page(ctx, p, req.Msg.ProjectId, int(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	out := &corev1.ListBuildsResponse{NextPageToken: next}
	for _, b := range builds {
		out.Builds = append(out.Builds, coreBuild(b, nil))
	}
	return connect.NewResponse(out), nil
}

func (s *CoreBuildService) GetBuild(ctx context.Context, req *connect.Request[corev1.GetBuildRequest]) (*connect.Response[corev1.GetBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, stats, err := s.Builds.Stats(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&corev1.GetBuildResponse{Build: coreBuild(b, &stats)}), nil
}

func (s *CoreBuildService) ShareBuild(ctx context.Context, req *connect.Request[corev1.ShareBuildRequest]) (*connect.Response[corev1.ShareBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	url, err := s.Builds.Share(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&corev1.ShareBuildResponse{ShareUrl: url}), nil
}

func (s *CoreBuildService) StopSharingBuild(ctx context.Context, req *connect.Request[corev1.StopSharingBuildRequest]) (*connect.Response[corev1.StopSharingBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Builds.StopSharing(ctx, p, req.Msg.BuildId); err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&corev1.StopSharingBuildResponse{}), nil
}
