package depot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"
	controlapi "github.com/moby/buildkit/api/services/control"
	"google.golang.org/protobuf/types/known/timestamppb"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/depotext"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/project"
)

// CLIBuildService serves depot.cli.v1.BuildService: what the depot CLI,
// depot-go and kiln's own CLI speak.
type CLIBuildService struct {
	Builds   *build.Service
	Projects *project.Service
	Logger   *slog.Logger
}

var _ cliv1connect.BuildServiceHandler = (*CLIBuildService)(nil)

func (s *CLIBuildService) err(ctx context.Context, err error) error {
	return ToConnect(ctx, s.Logger, err)
}

func (s *CLIBuildService) CreateBuild(ctx context.Context, req *connect.Request[cliv1.CreateBuildRequest]) (*connect.Response[cliv1.CreateBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	command := int32(cliv1.Command_COMMAND_BUILD)
	if len(req.Msg.Options) > 0 {
		command = int32(req.Msg.Options[0].Command)
	}
	save, saveTags := saveRequest(req.Msg.Options)
	if save {
		if err := s.Builds.CheckSave(saveTags); err != nil {
			return nil, s.err(ctx, err)
		}
	}
	// Kept whole, with the fields depot-go lacks (depotext.Options).
	b, token, err := s.Builds.Create(ctx, p, req.Msg.GetProjectId(), command, depotext.Options(req.Msg.Options))
	if err != nil {
		return nil, s.err(ctx, err)
	}
	// --load goes through kiln's registry (save.go): the client saves the
	// build there and pulls it into Docker.
	loadVia := loadRequest(req.Msg.Options) && s.Builds.RegistryHost() != ""
	res := &cliv1.CreateBuildResponse{
		BuildId:    b.ID,
		BuildToken: token,
		ProjectId:  b.ProjectID,
		BuildUrl:   s.Builds.URL(b.ID),
		Registry:   &cliv1.Registry{},
	}
	depotext.SetLoadUsingRegistry(res.Registry, loadVia)
	if save || loadVia { // --save, and --load through the registry: see save.go
		addSaveTargets(res, s.Builds.RegistryHost(), s.Builds.SaveRefs(b, saveTags), token)
	}
	return connect.NewResponse(res), nil
}

func finishResult(msg *cliv1.FinishBuildRequest) build.Result {
	switch r := msg.Result.(type) {
	case *cliv1.FinishBuildRequest_Error:
		return build.Result{Status: build.Failed, Error: r.Error.GetError()}
	case *cliv1.FinishBuildRequest_Canceled:
		return build.Result{Status: build.Canceled, Error: "canceled by the client"}
	}
	return build.Result{Status: build.Succeeded}
}

func (s *CLIBuildService) FinishBuild(ctx context.Context, req *connect.Request[cliv1.FinishBuildRequest]) (*connect.Response[cliv1.FinishBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Builds.Finish(ctx, p, req.Msg.BuildId, finishResult(req.Msg)); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1.FinishBuildResponse{}), nil
}

func platformName(p cliv1.BuilderPlatform) string {
	if p == cliv1.BuilderPlatform_BUILDER_PLATFORM_ARM64 {
		return platform.ARM64.String()
	}
	return platform.AMD64.String()
}

func (s *CLIBuildService) GetBuildKitConnection(ctx context.Context, req *connect.Request[cliv1.GetBuildKitConnectionRequest]) (*connect.Response[cliv1.GetBuildKitConnectionResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if e := req.Msg.GetRequiredEngine(); e != nil && e.GetDagger() != nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("kiln runs BuildKit builders only; dagger engines are not supported"))
	}
	c, err := s.Builds.Connect(ctx, p, req.Msg.BuildId, platformName(req.Msg.Platform))
	if err != nil {
		return nil, s.err(ctx, err)
	}
	if !c.Ready {
		return connect.NewResponse(&cliv1.GetBuildKitConnectionResponse{Connection: &cliv1.GetBuildKitConnectionResponse_Pending{
			Pending: &cliv1.GetBuildKitConnectionResponse_PendingConnection{WaitMs: c.WaitMs}}}), nil
	}
	return connect.NewResponse(&cliv1.GetBuildKitConnectionResponse{Connection: &cliv1.GetBuildKitConnectionResponse_Active{
		Active: &cliv1.GetBuildKitConnectionResponse_ActiveConnection{
			Endpoint:   c.Addr,
			ServerName: c.Endpoint.ServerName,
			Cert:       &cliv1.Cert{Cert: c.CertPEM, Key: c.KeyPEM},
			CaCert:     &cliv1.Cert{Cert: c.Endpoint.CACertPEM},
		}}}), nil
}

func (s *CLIBuildService) ReportBuildHealth(ctx context.Context, req *connect.Request[cliv1.ReportBuildHealthRequest]) (*connect.Response[cliv1.ReportBuildHealthResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	at, err := s.Builds.Health(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1.ReportBuildHealthResponse{CancelsAt: timestamppb.New(at)}), nil
}

func (s *CLIBuildService) ReportTimings(ctx context.Context, req *connect.Request[cliv1.ReportTimingsRequest]) (*connect.Response[cliv1.ReportTimingsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	var steps []build.Step
	for _, st := range req.Msg.BuildSteps {
		step := build.Step{Name: st.Name, Cached: st.Cached, Error: st.GetError(), Digest: st.GetStableDigest()}
		if st.StartTime != nil {
			step.StartedAt = st.StartTime.AsTime()
			step.CompletedAt = step.StartedAt.Add(time.Duration(st.DurationMs) * time.Millisecond)
		}
		if step.Digest == "" {
			step.Digest = "name:" + st.Name
		}
		steps = append(steps, step)
	}
	if err := s.Builds.ReportSteps(ctx, p, req.Msg.BuildId, steps, nil); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1.ReportTimingsResponse{}), nil
}

func (s *CLIBuildService) ReportBuildContext(ctx context.Context, req *connect.Request[cliv1.ReportBuildContextRequest]) (*connect.Response[cliv1.ReportBuildContextResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.Builds.Get(ctx, p, req.Msg.BuildId); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1.ReportBuildContextResponse{}), nil
}

var cliStatus = map[build.Status]cliv1.BuildStatus{
	build.Queued:    cliv1.BuildStatus_BUILD_STATUS_RUNNING,
	build.Running:   cliv1.BuildStatus_BUILD_STATUS_RUNNING,
	build.Pushing:   cliv1.BuildStatus_BUILD_STATUS_RUNNING,
	build.Succeeded: cliv1.BuildStatus_BUILD_STATUS_FINISHED,
	build.Failed:    cliv1.BuildStatus_BUILD_STATUS_FAILED,
	build.Canceled:  cliv1.BuildStatus_BUILD_STATUS_CANCELED,
}

func tsOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (s *CLIBuildService) ListBuilds(ctx context.Context, req *connect.Request[cliv1.ListBuildsRequest]) (*connect.Response[cliv1.ListBuildsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	projectID := req.Msg.ProjectId
	if projectID == "" && p.Kind == auth.TokenProject {
		projectID = p.ProjectID
	}
	limit := int(req.Msg.PageSize)
	builds, err := s.Builds.List(ctx, p, projectID, pageBefore(req.Msg.PageToken), limit)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &cliv1.ListBuildsResponse{}
	for _, b := range builds {
		out.Builds = append(out.Builds, &cliv1.Build{Id: b.ID, Status: cliStatus[b.Status], CreatedAt: timestamppb.New(b.CreatedAt), FinishedAt: tsOrNil(b.FinishedAt)})
	}
	if limit > 0 && len(builds) == limit {
		out.NextPageToken = strconv.FormatInt(builds[len(builds)-1].CreatedAt.UnixMilli(), 10)
	}
	return connect.NewResponse(out), nil
}

// pullTokenTTL is the lifetime of pull tokens GetPullToken hands out.
const pullTokenTTL = time.Hour

// GetPullToken mints a short-lived pull (registry read-only) token for a
// project, or for the project of a build.
func (s *CLIBuildService) GetPullToken(ctx context.Context, req *connect.Request[cliv1.GetPullTokenRequest]) (*connect.Response[cliv1.GetPullTokenResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	projectID := req.Msg.GetProjectId()
	if id := req.Msg.GetBuildId(); id != "" {
		b, err := s.Builds.Get(ctx, p, id)
		if err != nil {
			return nil, s.err(ctx, err)
		}
		if projectID != "" && projectID != b.ProjectID {
			return nil, s.err(ctx, fmt.Errorf("build %q: %w", id, errdefs.ErrNotFound))
		}
		projectID = b.ProjectID
	}
	if projectID == "" && p.Kind == auth.TokenProject {
		projectID = p.ProjectID
	}
	_, secret, err := s.Projects.MintToken(ctx, p, project.Mint{Kind: auth.TokenPull, ProjectID: projectID,
		Description: "pull token (GetPullToken)", TTL: pullTokenTTL})
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1.GetPullTokenResponse{Token: secret}), nil
}

// GetBuild is depot.cli.v1.BuildService/GetBuild (missing from depot-go).
func (s *CLIBuildService) GetBuild(ctx context.Context, req *connect.Request[cliv1extra.GetBuildRequest]) (*connect.Response[cliv1extra.GetBuildResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, err := s.Builds.Get(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1extra.GetBuildResponse{BuildId: b.ID, ProjectId: b.ProjectID, BuildUrl: s.Builds.URL(b.ID)}), nil
}

// statusSteps folds BuildKit status updates into steps and log lines.
func statusSteps(statuses []*controlapi.StatusResponse) ([]build.Step, []build.LogLine) {
	var steps []build.Step
	var logs []build.LogLine
	for _, st := range statuses {
		for _, v := range st.Vertexes {
			step := build.Step{Digest: v.Digest, Name: v.Name, Cached: v.Cached, Error: v.Error}
			if v.Started != nil {
				step.StartedAt = v.Started.AsTime()
			}
			if v.Completed != nil {
				step.CompletedAt = v.Completed.AsTime()
			}
			steps = append(steps, step)
		}
		for _, l := range st.Logs {
			at := time.Now()
			if l.Timestamp != nil {
				at = l.Timestamp.AsTime()
			}
			logs = append(logs, build.LogLine{Digest: l.Vertex, At: at, Message: string(l.Msg)})
		}
	}
	return steps, logs
}

func (s *CLIBuildService) reportStatus(ctx context.Context, p auth.Principal, buildID string, statuses []*controlapi.StatusResponse) error {
	steps, logs := statusSteps(statuses)
	return s.Builds.ReportSteps(ctx, p, buildID, steps, logs)
}

// ReportStatus stores one batch of BuildKit status updates.
func (s *CLIBuildService) ReportStatus(ctx context.Context, req *connect.Request[cliv1extra.ReportStatusRequest]) (*connect.Response[cliv1extra.ReportStatusResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.reportStatus(ctx, p, req.Msg.BuildId, req.Msg.Statuses); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&cliv1extra.ReportStatusResponse{}), nil
}

// ReportStatusStream stores BuildKit status updates as the client streams
// them. Each message names its build; all must be builds the caller may use.
func (s *CLIBuildService) ReportStatusStream(ctx context.Context, stream *connect.ClientStream[cliv1extra.ReportStatusStreamRequest]) (*connect.Response[cliv1extra.ReportStatusStreamResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	for stream.Receive() {
		m := stream.Msg()
		if err := s.reportStatus(ctx, p, m.BuildId, m.Statuses); err != nil {
			return nil, s.err(ctx, err)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, s.err(ctx, fmt.Errorf("status stream: %w", err))
	}
	return connect.NewResponse(&cliv1extra.ReportStatusStreamResponse{}), nil
}
