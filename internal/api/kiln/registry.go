package kiln

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/registry"
)

// RegistryAdmin is what RegistryAdminService needs of kiln's registry.
type RegistryAdmin interface {
	Retention(ctx context.Context, p auth.Principal, projectID string) (time.Duration, bool, error)
	SetRetention(ctx context.Context, p auth.Principal, projectID string, d time.Duration) error
	CollectGarbage(ctx context.Context) (registry.GCStats, error)
}

// RegistryAdminService serves kiln.v1.RegistryAdminService.
type RegistryAdminService struct {
	Registry RegistryAdmin
	Logger   *slog.Logger
}

var _ kilnv1connect.RegistryAdminServiceHandler = (*RegistryAdminService)(nil)

func registryCaller(ctx context.Context) (auth.Principal, error) {
	p, err := depot.Caller(ctx)
	if err == nil && p.Kind == auth.TokenPull {
		err = connect.NewError(connect.CodePermissionDenied, errors.New("pull tokens are for the registry only; use a project or organization token"))
	}
	return p, err
}

func (s *RegistryAdminService) settings(ctx context.Context, p auth.Principal, projectID string) (*kilnv1.RegistrySettings, error) {
	d, set, err := s.Registry.Retention(ctx, p, projectID)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	return &kilnv1.RegistrySettings{ProjectId: projectID, Retention: durationpb.New(d), RetentionIsDefault: !set}, nil
}

func (s *RegistryAdminService) GetRegistrySettings(ctx context.Context, req *connect.Request[kilnv1.GetRegistrySettingsRequest]) (*connect.Response[kilnv1.GetRegistrySettingsResponse], error) {
	p, err := registryCaller(ctx)
	if err != nil {
		return nil, err
	}
	rs, err := s.settings(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&kilnv1.GetRegistrySettingsResponse{Settings: rs}), nil
}

func (s *RegistryAdminService) UpdateRegistrySettings(ctx context.Context, req *connect.Request[kilnv1.UpdateRegistrySettingsRequest]) (*connect.Response[kilnv1.UpdateRegistrySettingsResponse], error) {
	p, err := registryCaller(ctx)
	if err != nil {
		return nil, err
	}
	if req.Msg.Retention != nil {
		if err := req.Msg.Retention.CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("retention: invalid duration"))
		}
		if err := s.Registry.SetRetention(ctx, p, req.Msg.ProjectId, req.Msg.Retention.AsDuration()); err != nil {
			return nil, depot.ToConnect(ctx, s.Logger, err)
		}
	}
	rs, err := s.settings(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&kilnv1.UpdateRegistrySettingsResponse{Settings: rs}), nil
}

func (s *RegistryAdminService) CollectGarbage(ctx context.Context, req *connect.Request[kilnv1.CollectGarbageRequest]) (*connect.Response[kilnv1.CollectGarbageResponse], error) {
	p, err := registryCaller(ctx)
	if err != nil {
		return nil, err
	}
	if !p.IsOrg() {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("a garbage collection needs an organization token"))
	}
	st, err := s.Registry.CollectGarbage(ctx)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&kilnv1.CollectGarbageResponse{TagsExpired: int32(st.TagsExpired), ManifestsDeleted: int32(st.ManifestsDeleted),
		BlobsDeleted: int32(st.BlobsDeleted), BytesFreed: st.BytesFreed, LinksDeleted: int32(st.LinksDeleted),
		UploadsPurged: int32(st.UploadsPurged), Indexed: int32(st.Indexed)}), nil
}
