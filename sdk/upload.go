package sdk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"connectrpc.com/connect"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
)

// uploadPolicy retries an upload PUT that got no answer or a 5xx: 3
// tries, from 0.5 s apart (the URL takes the same PUT again).
var uploadPolicy = retry.Policy{Attempts: 3, Delay: 500 * time.Millisecond}

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
	err = retry.Do(ctx, uploadPolicy, func(ctx context.Context) error {
		return put(ctx, up.Msg.Url, up.Msg.Headers, f, size)
	})
	if err != nil {
		return "", err
	}
	return up.Msg.ContextKey, nil
}

// put makes one PUT of f to the upload URL. A failure worth another try
// is of kind unavailable. The URL is never in an error: it is signed.
func put(ctx context.Context, uploadURL string, headers map[string]string, f *os.File, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, uploadURL, io.NopCloser(io.NewSectionReader(f, 0, size)))
	if err != nil {
		return fmt.Errorf("sdk: the server's upload URL is not usable: %w", errdefs.ErrInvalid)
	}
	req.ContentLength = size
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("sdk: upload the context: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode >= 500:
		return fmt.Errorf("sdk: upload the context: the upload URL answered %s: %w", resp.Status, errdefs.ErrUnavailable)
	case resp.StatusCode == http.StatusRequestEntityTooLarge:
		return fmt.Errorf("sdk: upload the context: the upload URL answered %s: %w", resp.Status, errdefs.ErrExhausted)
	}
	return fmt.Errorf("sdk: upload the context: the upload URL answered %s: %w", resp.Status, errdefs.ErrInvalid)
}
