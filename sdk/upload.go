package sdk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"connectrpc.com/connect"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
)

// UploadContext uploads a build context to kiln and returns the key that
// names it in [WithUploadedContext]. archive is a tar archive, gzip
// compressed or not, with the Dockerfile inside; it is read to its end
// (and spooled to a temporary file, to send its size and checksum first).
//
// Of opts, only [WithServer] and [WithProject] matter here (found as
// NewBuilder finds them when not given); the context belongs to that
// project and can only be built there.
func UploadContext(ctx context.Context, archive io.Reader, opts ...Option) (string, error) {
	var s settings
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o.apply(&s); err != nil {
			return "", err
		}
	}
	cfg, err := client.Resolve(s.apiURL, s.token)
	if err != nil {
		return "", fmt.Errorf("sdk: %w", err)
	}
	projectID, err := client.FindProject(s.project, ".")
	if err != nil {
		return "", fmt.Errorf("sdk: %w", err)
	}

	f, err := os.CreateTemp("", "kiln-sdk-context-*")
	if err != nil {
		return "", fmt.Errorf("sdk: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), archive)
	if err != nil {
		return "", fmt.Errorf("sdk: read the context archive: %w", err)
	}

	api := cfg.SourceBuilds()
	up, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[kilnv1.GenerateUploadURLResponse], error) {
		return api.GenerateUploadURL(ctx, connect.NewRequest(&kilnv1.GenerateUploadURLRequest{
			Project: &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_ProjectId{ProjectId: projectID}},
			Size:    size, Sha256: hex.EncodeToString(h.Sum(nil))}))
	})
	if err != nil {
		return "", fmt.Errorf("sdk: get an upload URL for the context: %w", err)
	}
	if limit := up.Msg.MaxSize; limit > 0 && size > limit {
		return "", fmt.Errorf("sdk: the context archive is %d bytes; the server accepts at most %d: %w", size, limit, errdefs.ErrExhausted)
	}
	if err := client.PutContext(ctx, client.Upload{URL: up.Msg.Url, Headers: up.Msg.Headers, Body: f, Size: size}); err != nil {
		return "", fmt.Errorf("sdk: %w", err)
	}
	return up.Msg.ContextKey, nil
}
