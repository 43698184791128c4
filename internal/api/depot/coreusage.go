package depot

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// OrganizationService serves depot.core.v1.OrganizationService.
type OrganizationService struct {
	Projects *project.Service
	Logger   *slog.Logger
}

var _ corev1connect.OrganizationServiceHandler = (*OrganizationService)(nil)

// ListOrganizations answers the caller's organization: a kiln token
// belongs to exactly one.
func (s *OrganizationService) ListOrganizations(ctx context.Context, _ *connect.Request[corev1.ListOrganizationsRequest]) (*connect.Response[corev1.ListOrganizationsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	org, err := s.Projects.Organization(ctx, p)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&corev1.ListOrganizationsResponse{Organizations: []*corev1.ListOrganizationsResponse_Organization{
		{OrgId: org.ID, Name: org.Name, CreatedAt: timestamppb.New(org.CreatedAt)},
	}}), nil
}

// UsageService serves depot.core.v1.UsageService: build counts and build
// time per project in a period (see build.Usage for what counts), and each
// project's layer cache on disk now.
type UsageService struct {
	Projects *project.Service
	Builds   *build.Service
	Logger   *slog.Logger
	Now      func() time.Time // nil → time.Now
}

var _ corev1connect.UsageServiceHandler = (*UsageService)(nil)

func (s *UsageService) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// period reads start_at/end_at; both are optional (see build.NewPeriod).
func (s *UsageService) period(start, end *timestamppb.Timestamp) (build.Period, error) {
	var from, to time.Time
	for _, ts := range []struct {
		name string
		v    *timestamppb.Timestamp
		out  *time.Time
	}{{"start_at", start, &from}, {"end_at", end, &to}} {
		if ts.v == nil {
			continue
		}
		if err := ts.v.CheckValid(); err != nil {
			return build.Period{}, fmt.Errorf("%s is not a valid timestamp: %w", ts.name, errdefs.ErrInvalid)
		}
		*ts.out = ts.v.AsTime()
	}
	return build.NewPeriod(from, to, s.now())
}

func projectUsagePB(u build.Usage) *corev1.ProjectUsage {
	return &corev1.ProjectUsage{
		ProjectId:            u.Project.ID,
		BuildCount:           int32(min(u.Builds, 1<<31-1)),
		BuildDurationSeconds: build.Seconds(u.BuildTime),
		LayerCacheSizeGb:     build.CacheGB(u.CacheBytes),
	}
}

func (s *UsageService) GetProjectUsage(ctx context.Context, req *connect.Request[corev1.GetProjectUsageRequest]) (*connect.Response[corev1.GetProjectUsageResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	period, err := s.period(req.Msg.StartAt, req.Msg.EndAt)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	proj, err := s.Projects.Get(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	usage, err := s.Builds.Usage(ctx, p, []project.Project{proj}, period, false)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&corev1.GetProjectUsageResponse{Usage: projectUsagePB(usage[0])}), nil
}

// ListProjectUsage pages through the caller's projects in creation order;
// the page token is the index of the next project ("" on the last page).
func (s *UsageService) ListProjectUsage(ctx context.Context, req *connect.Request[corev1.ListProjectUsageRequest]) (*connect.Response[corev1.ListProjectUsageResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	period, err := s.period(req.Msg.StartAt, req.Msg.EndAt)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	size := int(req.Msg.GetPageSize())
	if size < 0 {
		return nil, ToConnect(ctx, s.Logger, fmt.Errorf("page_size must not be negative: %w", errdefs.ErrInvalid))
	}
	if size == 0 || size > 100 {
		size = 100
	}
	offset := 0
	if tok := req.Msg.GetPageToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || len(tok) > 9 {
			return nil, ToConnect(ctx, s.Logger, fmt.Errorf("malformed page token: %w", errdefs.ErrInvalid))
		}
		offset = n
	}
	projects, err := s.Projects.List(ctx, p)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	out := &corev1.ListProjectUsageResponse{}
	if offset >= len(projects) {
		return connect.NewResponse(out), nil
	}
	page := projects[offset:min(offset+size, len(projects))]
	usage, err := s.Builds.Usage(ctx, p, page, period, false)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	for _, u := range usage {
		out.Usage = append(out.Usage, projectUsagePB(u))
	}
	if offset+len(page) < len(projects) {
		out.NextPageToken = strconv.Itoa(offset + len(page))
	}
	return connect.NewResponse(out), nil
}

// GetUsage reports container builds per project (minutes billed = build
// time, minutes saved = the cache's estimated saving, see build.Stats) and
// the layer cache as storage. kiln runs no GitHub Actions runners or agent
// sandboxes: those sections are empty.
func (s *UsageService) GetUsage(ctx context.Context, req *connect.Request[corev1.GetUsageRequest]) (*connect.Response[corev1.GetUsageResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	period, err := s.period(req.Msg.StartAt, req.Msg.EndAt)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	projects, err := s.Projects.List(ctx, p)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	usage, err := s.Builds.Usage(ctx, p, projects, period, true)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	out := &corev1.GetUsageResponse{PeriodStart: timestamppb.New(period.Start), PeriodEnd: timestamppb.New(period.End)}
	var cacheBytes int64
	for _, u := range usage {
		cacheBytes += u.CacheBytes
		if u.Builds == 0 {
			continue
		}
		out.ContainerBuild = append(out.ContainerBuild, &corev1.ContainerBuildUsage{
			ProjectName:   u.Project.Name,
			BuildCount:    int32(min(u.Builds, 1<<31-1)),
			MinutesSaved:  float32(u.SavedTime.Minutes()),
			MinutesBilled: float32(u.BuildTime.Minutes()),
		})
	}
	out.Storage = []*corev1.StorageUsage{{StorageType: "layer_cache", TotalGb: float32(float64(cacheBytes) / (1 << 30))}}
	return connect.NewResponse(out), nil
}
