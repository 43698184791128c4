package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
)

// Upload is a build context archive to PUT to the upload URL kiln's
// GenerateUploadURL answered (local disk or a presigned S3 URL).
type Upload struct {
	URL     string
	Headers map[string]string
	Body    io.ReaderAt
	Size    int64
	// Wrap, when set, wraps the body of each attempt (progress display).
	Wrap func(io.Reader) io.Reader
	// Failed, when set, is called after each failed attempt.
	Failed func()
}

// uploadPolicy: a transient failure (a reset connection, a 500, 502, 503
// or 504) is tried again, 3 attempts in all; an upload URL takes the same
// PUT again.
var uploadPolicy = retry.Policy{Attempts: 3, Delay: 500 * time.Millisecond,
	Retryable: func(err error) bool { return errors.As(err, new(transientUpload)) }}

// PutContext uploads u. The URL is never put in an error: it carries a
// signature. Errors are of kind invalid (4xx), permission (401, 403),
// exhausted (413) or unavailable (the rest).
func PutContext(ctx context.Context, u Upload) error {
	err := retry.Do(ctx, uploadPolicy, func(ctx context.Context) error {
		err := putOnce(ctx, u)
		if err != nil && u.Failed != nil {
			u.Failed()
		}
		return err
	})
	var t transientUpload
	if errors.As(err, &t) {
		return t.error
	}
	return err
}

// transientUpload marks a failure worth another attempt.
type transientUpload struct{ error }

func (t transientUpload) Unwrap() error { return t.error }

func putOnce(ctx context.Context, u Upload) error {
	var body io.Reader = io.NewSectionReader(u.Body, 0, u.Size)
	if u.Wrap != nil {
		body = u.Wrap(body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.URL, io.NopCloser(body))
	if err != nil {
		return fmt.Errorf("upload the context: the server's upload URL is not usable: %w", errdefs.ErrInvalid)
	}
	req.ContentLength = u.Size
	for k, v := range u.Headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // it names the URL; keep its cause only
			err = ue.Err
		}
		err = fmt.Errorf("upload the context: %w", err)
		if retry.Transient(err) {
			return transientUpload{err}
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	text := fmt.Sprintf("upload the context: the upload URL answered %s", resp.Status)
	if s := strings.TrimSpace(string(msg)); s != "" {
		text += ": " + s
	}
	kind := errdefs.ErrUnavailable
	switch {
	case resp.StatusCode == http.StatusRequestEntityTooLarge:
		kind = errdefs.ErrExhausted
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		kind = errdefs.ErrPermission
	case resp.StatusCode/100 == 4:
		kind = errdefs.ErrInvalid
	}
	err = fmt.Errorf("%s: %w", text, kind)
	switch resp.StatusCode {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return transientUpload{err}
	}
	return err
}
