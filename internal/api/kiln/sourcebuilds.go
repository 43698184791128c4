package kiln

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/runner"
)

// SourceBuildService serves kiln.v1.SourceBuildService: builds kiln runs
// itself from uploaded contexts (internal/runner).
type SourceBuildService struct {
	Runner *runner.Runner
	Logger *slog.Logger
	// CustomerOf names a project's customer, for answers ("" for none).
	CustomerOf func(ctx context.Context, projectID string) string
	// Resources reads a build's builder samples and events, to whoever may
	// read the build (build.Service.Resources).
	Resources func(ctx context.Context, p auth.Principal, buildID string) (build.Resources, error)
}

var _ kilnv1connect.SourceBuildServiceHandler = (*SourceBuildService)(nil)

func (s *SourceBuildService) err(ctx context.Context, err error) error {
	return depot.ToConnect(ctx, s.Logger, err)
}

var statusPB = map[build.Status]kilnv1.BuildStatus{
	build.Queued:    kilnv1.BuildStatus_BUILD_STATUS_QUEUED,
	build.Running:   kilnv1.BuildStatus_BUILD_STATUS_RUNNING,
	build.Pushing:   kilnv1.BuildStatus_BUILD_STATUS_PUSHING,
	build.Succeeded: kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED,
	build.Failed:    kilnv1.BuildStatus_BUILD_STATUS_FAILED,
	build.Canceled:  kilnv1.BuildStatus_BUILD_STATUS_CANCELED,
}

func (s *SourceBuildService) buildPB(ctx context.Context, b build.Build, spec runner.Spec, pos int) *kilnv1.Build {
	out := &kilnv1.Build{
		BuildId:       b.ID,
		ProjectId:     b.ProjectID,
		Status:        statusPB[b.Status],
		Error:         b.Error,
		CreatedAt:     tsOrNil(b.CreatedAt),
		StartedAt:     tsOrNil(b.StartedAt),
		FinishedAt:    tsOrNil(b.FinishedAt),
		ImageRefs:     b.ImageRefs,
		ImageDigest:   b.ImageDigest,
		ContextKey:    spec.ContextKey,
		GitUrl:        spec.GitURL,
		GitCommit:     b.GitCommit,
		Dockerfile:    spec.Dockerfile,
		Target:        spec.Target,
		Platforms:     spec.Platforms,
		RebuildOf:     spec.RebuildOf,
		QueuePosition: int32(min(pos, 1<<30)),
		Kind:          "client",
	}
	if b.IsSource() {
		out.Kind = "source"
	}
	if s.CustomerOf != nil {
		out.CustomerId = s.CustomerOf(ctx, b.ProjectID)
	}
	return out
}

func projectRef(r *kilnv1.ProjectRef) (projectID, customerID string) {
	return r.GetProjectId(), r.GetCustomerId()
}

func (s *SourceBuildService) GenerateUploadURL(ctx context.Context, req *connect.Request[kilnv1.GenerateUploadURLRequest]) (*connect.Response[kilnv1.GenerateUploadURLResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	pid, cid := projectRef(req.Msg.Project)
	u, err := s.Runner.Upload(ctx, p, pid, cid, req.Msg.Size, req.Msg.Sha256)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&kilnv1.GenerateUploadURLResponse{Url: u.URL, Headers: u.Headers, ContextKey: u.ContextKey,
		ExpiresAt: timestamppb.New(u.ExpiresAt), ProjectId: u.ProjectID, MaxSize: u.MaxSize}), nil
}

func (s *SourceBuildService) CreateBuild(ctx context.Context, req *connect.Request[kilnv1.CreateBuildRequest]) (*connect.Response[kilnv1.CreateBuildResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	pid, cid := projectRef(m.Project)
	spec := runner.Spec{ContextKey: m.ContextKey, Dockerfile: m.Dockerfile, Target: m.Target, BuildArgs: m.BuildArgs,
		Tags: m.Tags, Platforms: m.Platforms, NoCache: m.NoCache, GitURL: m.GitUrl}
	b, err := s.Runner.Create(ctx, p, pid, cid, spec, m.Secrets)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&kilnv1.CreateBuildResponse{BuildId: b.ID, ProjectId: b.ProjectID, Status: statusPB[b.Status]}), nil
}

func (s *SourceBuildService) GetBuild(ctx context.Context, req *connect.Request[kilnv1.GetBuildRequest]) (*connect.Response[kilnv1.GetBuildResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, spec, pos, err := s.Runner.Get(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&kilnv1.GetBuildResponse{Build: s.buildPB(ctx, b, spec, pos)}), nil
}

func (s *SourceBuildService) WatchBuild(ctx context.Context, req *connect.Request[kilnv1.WatchBuildRequest], stream *connect.ServerStream[kilnv1.WatchBuildResponse]) error {
	p, err := depot.Caller(ctx)
	if err != nil {
		return err
	}
	err = s.Runner.Watch(ctx, p, req.Msg.BuildId, !req.Msg.NoFollow, func(e runner.Event) error {
		var msg kilnv1.WatchBuildResponse
		switch {
		case e.Build != nil:
			spec, pos := s.Runner.Describe(*e.Build)
			msg.Event = &kilnv1.WatchBuildResponse_Build{Build: s.buildPB(ctx, *e.Build, spec, pos)}
		case e.Step != nil:
			st := e.Step
			msg.Event = &kilnv1.WatchBuildResponse_Step{Step: &kilnv1.Step{Digest: st.Digest, Name: st.Name, Cached: st.Cached,
				StartedAt: tsOrNil(st.StartedAt), CompletedAt: tsOrNil(st.CompletedAt), Error: st.Error}}
		case e.Log != nil:
			l := e.Log
			msg.Event = &kilnv1.WatchBuildResponse_Log{Log: &kilnv1.LogLine{Digest: l.Digest, At: tsOrNil(l.At), Message: l.Message, Seq: int64(l.Seq)}}
		}
		return stream.Send(&msg)
	})
	if err != nil {
		return s.err(ctx, err)
	}
	return nil
}

func (s *SourceBuildService) CancelBuild(ctx context.Context, req *connect.Request[kilnv1.CancelBuildRequest]) (*connect.Response[kilnv1.CancelBuildResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.Runner.Cancel(ctx, p, req.Msg.BuildId); err != nil {
		return nil, s.err(ctx, err)
	}
	b, spec, pos, err := s.Runner.Get(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&kilnv1.CancelBuildResponse{Build: s.buildPB(ctx, b, spec, pos)}), nil
}

// Page tokens are the created-at (unix ms) of the last build of the page.
func pageToken(t time.Time) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMilli(), 10)))
}

func parsePageToken(tok string) (time.Time, error) {
	if tok == "" {
		return time.Time{}, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil {
		if ms, perr := strconv.ParseInt(string(raw), 10, 64); perr == nil && ms > 0 {
			return time.UnixMilli(ms), nil
		}
	}
	return time.Time{}, fmt.Errorf("page_token: not one this server issued: %w", errdefs.ErrInvalid)
}

func (s *SourceBuildService) ListBuilds(ctx context.Context, req *connect.Request[kilnv1.ListBuildsRequest]) (*connect.Response[kilnv1.ListBuildsResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	before, err := parsePageToken(req.Msg.PageToken)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	size := int(req.Msg.PageSize)
	if size <= 0 {
		size = 50
	}
	size = min(size, 100)
	pid, cid := projectRef(req.Msg.Project)
	bs, err := s.Runner.List(ctx, p, pid, cid, before, size)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &kilnv1.ListBuildsResponse{}
	for _, b := range bs {
		spec, pos := s.Runner.Describe(b)
		out.Builds = append(out.Builds, s.buildPB(ctx, b, spec, pos))
	}
	if len(bs) == size {
		out.NextPageToken = pageToken(bs[len(bs)-1].CreatedAt)
	}
	return connect.NewResponse(out), nil
}

func (s *SourceBuildService) RebuildBuild(ctx context.Context, req *connect.Request[kilnv1.RebuildBuildRequest]) (*connect.Response[kilnv1.RebuildBuildResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, err := s.Runner.Rebuild(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&kilnv1.RebuildBuildResponse{BuildId: b.ID, Status: statusPB[b.Status]}), nil
}

func (s *SourceBuildService) RecordGitCommit(ctx context.Context, req *connect.Request[kilnv1.RecordGitCommitRequest]) (*connect.Response[kilnv1.RecordGitCommitResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Runner.RecordGitCommit(ctx, p, req.Msg.BuildId, req.Msg.GitCommit); err != nil {
		return nil, s.err(ctx, err)
	}
	return connect.NewResponse(&kilnv1.RecordGitCommitResponse{}), nil
}

func (s *SourceBuildService) GetBuildResources(ctx context.Context, req *connect.Request[kilnv1.GetBuildResourcesRequest]) (*connect.Response[kilnv1.GetBuildResourcesResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	res, err := s.Resources(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	out := &kilnv1.GetBuildResourcesResponse{}
	for _, r := range res.Samples {
		out.Samples = append(out.Samples, &kilnv1.ResourceSample{At: timestamppb.New(r.At), IntervalMs: r.Interval.Milliseconds(),
			CpuCores: r.CPUCores, MemoryBytes: r.Memory, MemoryPeakBytes: r.MemoryPeak, MemoryLimitBytes: r.MemoryLimit,
			IoReadBytes: r.IORead, IoWriteBytes: r.IOWrite})
	}
	for _, e := range res.Events {
		out.Events = append(out.Events, &kilnv1.ResourceEvent{At: timestamppb.New(e.At), Kind: e.Kind, Message: e.Message,
			Count: int32(e.Count), MemoryBytes: e.Memory, MemoryLimitBytes: e.MemoryLimit})
	}
	return connect.NewResponse(out), nil
}
