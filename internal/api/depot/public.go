package depot

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	buildkitv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/buildkit/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// PublicBuildService serves depot.build.v1.BuildService.
type PublicBuildService struct {
	Builds *build.Service
	Logger *slog.Logger
}

func (s *PublicBuildService) err(ctx context.Context, err error) error {
	return ToConnect(ctx, s.Logger, err)
}

func (s *PublicBuildService) CreateBuild(ctx context.Context, req *connect.Request[buildv1.CreateBuildRequest]) (*connect.Response[buildv1.CreateBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, token, err := s.Builds.Create(ctx, p, req.Msg.ProjectId, 0, nil)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&buildv1.CreateBuildResponse{BuildId: b.ID, BuildToken: token}), nil
}

func (s *PublicBuildService) FinishBuild(ctx context.Context, req *connect.Request[buildv1.FinishBuildRequest]) (*connect.Response[buildv1.FinishBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	r := build.Result{Status: build.Succeeded}
	if e, ok := req.Msg.Result.(*buildv1.FinishBuildRequest_Error); ok {
		r = build.Result{Status: build.Failed, Error: e.Error.GetError()}
	}
	if err := s.Builds.Finish(ctx, p, req.Msg.BuildId, r); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&buildv1.FinishBuildResponse{}), nil
}

// buildIn returns a build the caller may see, checking that the request's
// project_id (when given) is the build's, so a project token for A cannot
// name B's build through A's project.
func (s *PublicBuildService) buildIn(ctx context.Context, p auth.Principal, buildID, projectID string) (build.Build, error) {
	b, err := s.Builds.Get(ctx, p, buildID)
	if err == nil && projectID != "" && projectID != b.ProjectID {
		err = errdefs.ErrNotFound
	}
	return b, err
}

func (s *PublicBuildService) GetBuildSteps(ctx context.Context, req *connect.Request[buildv1.GetBuildStepsRequest]) (*connect.Response[buildv1.GetBuildStepsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, err := s.buildIn(ctx, p, req.Msg.BuildId, req.Msg.ProjectId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	steps, err := s.Builds.Steps(ctx, p, b.ID)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &buildv1.GetBuildStepsResponse{}
	for _, st := range steps {
		cs := buildv1.GetBuildStepsResponse_BuildStep_CACHE_STATE_UNCACHED
		if st.Cached {
			cs = buildv1.GetBuildStepsResponse_BuildStep_CACHE_STATE_CACHED
		}
		step := &buildv1.GetBuildStepsResponse_BuildStep{Name: st.Name, Digest: st.Digest, StartedAt: tsOrNil(st.StartedAt),
			CompletedAt: tsOrNil(st.CompletedAt), CacheState: cs, HasLogs: true}
		if st.Error != "" {
			step.Error = &st.Error
		}
		out.BuildSteps = append(out.BuildSteps, step)
	}
	return connect.NewResponse(out), nil
}

func (s *PublicBuildService) GetBuildStepLogs(ctx context.Context, req *connect.Request[buildv1.GetBuildStepLogsRequest]) (*connect.Response[buildv1.GetBuildStepLogsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, err := s.buildIn(ctx, p, req.Msg.BuildId, req.Msg.ProjectId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	limit := int(req.Msg.GetPageSize())
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	after, _ := strconv.Atoi(req.Msg.GetPageToken())
	lines, next, err := s.Builds.Logs(ctx, p, b.ID, req.Msg.BuildStepDigest, after, limit)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &buildv1.GetBuildStepLogsResponse{}
	for _, l := range lines {
		out.Logs = append(out.Logs, &buildv1.GetBuildStepLogsResponse_Log{Message: l.Message, Timestamp: timestamppb.New(l.At)})
	}
	if len(lines) == limit {
		tok := strconv.Itoa(next)
		out.NextPageToken = &tok
	}
	return connect.NewResponse(out), nil
}

// BuildKitService serves depot.buildkit.v1.BuildKitService.
type BuildKitService struct {
	Builds *build.Service
	Logger *slog.Logger
	// Poll is how often GetEndpoint re-checks a starting builder.
	Poll time.Duration
}

func bkPlatform(p buildkitv1.Platform) string {
	if p == buildkitv1.Platform_PLATFORM_ARM64 {
		return platform.ARM64.String()
	}
	return platform.AMD64.String()
}

// GetEndpoint streams pending until the builder is ready, then active.
func (s *BuildKitService) GetEndpoint(ctx context.Context, req *connect.Request[buildkitv1.GetEndpointRequest], stream *connect.ServerStream[buildkitv1.GetEndpointResponse]) error {
	p, err := Caller(ctx)
	if err != nil {
		return err
	}
	poll := s.Poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	for {
		c, err := s.Builds.Connect(ctx, p, req.Msg.BuildId, bkPlatform(req.Msg.Platform))
		if err != nil {
			return ToConnect(ctx, s.Logger, err)
		}
		if c.Ready {
			return stream.Send(&buildkitv1.GetEndpointResponse{Connection: &buildkitv1.GetEndpointResponse_Active{
				Active: &buildkitv1.GetEndpointResponse_ActiveConnection{
					Endpoint:   c.Addr,
					ServerName: c.Endpoint.ServerName,
					Cert: &buildkitv1.CertificatePair{
						Cert: &buildkitv1.PublicCertificate{Cert: c.CertPEM},
						Key:  &buildkitv1.PrivateKey{Key: c.KeyPEM},
					},
					CaCert: &buildkitv1.PublicCertificate{Cert: c.Endpoint.CACertPEM},
				}}})
		}
		if err := stream.Send(&buildkitv1.GetEndpointResponse{Connection: &buildkitv1.GetEndpointResponse_Pending{Pending: &buildkitv1.GetEndpointResponse_PendingConnection{}}}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ToConnect(ctx, s.Logger, ctx.Err())
		case <-time.After(poll):
		}
	}
}

// ReportHealth takes a stream of health reports; each one extends the build.
func (s *BuildKitService) ReportHealth(ctx context.Context, stream *connect.ClientStream[buildkitv1.ReportHealthRequest]) (*connect.Response[buildkitv1.ReportHealthResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	for stream.Receive() {
		if _, err := s.Builds.Health(ctx, p, stream.Msg().BuildId); err != nil {
			return nil, ToConnect(ctx, s.Logger, err)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&buildkitv1.ReportHealthResponse{}), nil
}

func (s *BuildKitService) ReleaseEndpoint(ctx context.Context, req *connect.Request[buildkitv1.ReleaseEndpointRequest]) (*connect.Response[buildkitv1.ReleaseEndpointResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Builds.Release(ctx, p, req.Msg.BuildId, bkPlatform(req.Msg.Platform)); err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&buildkitv1.ReleaseEndpointResponse{}), nil
}
