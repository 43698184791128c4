package depot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/registry"
)

// Images is what RegistryService needs of kiln's registry.
type Images interface {
	ListImages(ctx context.Context, p auth.Principal, projectID string, pageSize int, pageToken string) ([]registry.Image, string, error)
	DeleteImages(ctx context.Context, p auth.Principal, projectID string, tags []string) error
}

// RegistryService is depot.build.v1.RegistryService: the images saved in
// a project's repositories of kiln's registry. The server mounts it with
// the registry (it is not part of Mount).
type RegistryService struct {
	Images Images
	Logger *slog.Logger
}

// registryCaller is the principal; pull tokens read the registry itself,
// never an API.
func registryCaller(ctx context.Context) (auth.Principal, error) {
	p, err := Caller(ctx)
	if err != nil {
		return p, err
	}
	if p.Kind == auth.TokenPull {
		return p, connect.NewError(connect.CodePermissionDenied, errors.New("pull tokens are for the registry only (docker pull, crane); use a project or organization token"))
	}
	return p, nil
}

// ListImages lists the tags of the project's repositories: "tag" in
// <project-id>, "name:tag" in <project-id>/<name>.
func (s *RegistryService) ListImages(ctx context.Context, req *connect.Request[buildv1.ListImagesRequest]) (*connect.Response[buildv1.ListImagesResponse], error) {
	p, err := registryCaller(ctx)
	if err != nil {
		return nil, err
	}
	if n := req.Msg.GetPageSize(); n < 0 {
		return nil, ToConnect(ctx, s.Logger, fmt.Errorf("page_size %d: must not be negative: %w", n, errdefs.ErrInvalid))
	}
	imgs, next, err := s.Images.ListImages(ctx, p, req.Msg.ProjectId, int(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	res := &buildv1.ListImagesResponse{Images: make([]*buildv1.Image, 0, len(imgs))}
	for _, img := range imgs {
		res.Images = append(res.Images, &buildv1.Image{Tag: img.Tag, Digest: img.Digest,
			PushedAt: timestamppb.New(img.PushedAt), SizeBytes: uint64(max(img.Size, 0))})
	}
	if next != "" {
		res.NextPageToken = &next
	}
	return connect.NewResponse(res), nil
}

// DeleteImage removes tags; their images are reclaimed by the registry's
// next garbage collection unless something else keeps them. Tags that do
// not exist are skipped.
func (s *RegistryService) DeleteImage(ctx context.Context, req *connect.Request[buildv1.DeleteImageRequest]) (*connect.Response[buildv1.DeleteImageResponse], error) {
	p, err := registryCaller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Images.DeleteImages(ctx, p, req.Msg.ProjectId, req.Msg.ImageTags); err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&buildv1.DeleteImageResponse{}), nil
}
