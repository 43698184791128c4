package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// S3Config configures an S3 store.
type S3Config struct {
	// Endpoint is where kiln reaches S3, e.g. "http://10.0.0.5:7070" or
	// "https://s3.us-east-1.amazonaws.com".
	Endpoint string
	// PublicEndpoint is where uploaders reach the same S3, if not at
	// Endpoint (a public name or load balancer). Upload URLs are signed
	// for it: a SigV4 signature covers the host, so a URL signed for one
	// name does not work at another.
	PublicEndpoint string
	// Region defaults to "us-east-1".
	Region string
	Bucket string
	// AccessKey and SecretKey are static credentials; kiln needs
	// s3:GetObject, PutObject, DeleteObject and ListBucket on the bucket.
	AccessKey, SecretKey string
	// Prefix is prepended to every key (e.g. "kiln/"), so kiln can share a
	// bucket. It is a plain string prefix: end it with "/" for a folder.
	Prefix string
	// PathStyle addresses the bucket as endpoint/bucket rather than
	// bucket.endpoint: true for versitygw and MinIO.
	PathStyle bool
}

// S3 is a Store in an S3 bucket. Uploaders PUT straight to S3 with a
// presigned URL signed for the public endpoint; kiln reads and writes
// through the internal one.
//
// Of PutOptions, S3 enforces TTL and Size (signed as the Content-Length),
// not MaxSize or SHA256: that would take a POST form or a checksum header.
// Bound uploads with Size, and verify digests when reading. A URL takes one
// upload: it signs If-None-Match: *, which the uploader sends (it is in
// Presigned.Headers: `curl -T file -H 'If-None-Match: *' URL`).
type S3 struct {
	client  *s3.Client        // internal endpoint
	presign *s3.PresignClient // public endpoint
	bucket  string
	prefix  string
}

var _ Store = (*S3)(nil)

// NewS3 connects to the bucket and checks that it is reachable with the
// credentials given (HeadBucket); the error says what to fix if not.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.PublicEndpoint == "" {
		cfg.PublicEndpoint = cfg.Endpoint
	}
	switch {
	case cfg.Bucket == "":
		return nil, fmt.Errorf("S3 blob store: no bucket given: %w", errdefs.ErrInvalid)
	case cfg.AccessKey == "" || cfg.SecretKey == "":
		return nil, fmt.Errorf("S3 blob store: an access key and a secret key are required: %w", errdefs.ErrInvalid)
	}
	for _, ep := range []struct{ name, url string }{{"endpoint", cfg.Endpoint}, {"public endpoint", cfg.PublicEndpoint}} {
		u, err := url.Parse(ep.url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("S3 blob store: %s %q is not an http(s) URL like https://s3.example.com: %w", ep.name, ep.url, errdefs.ErrInvalid)
		}
	}
	if err := validPrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("S3 blob store: key prefix %q: %w", cfg.Prefix, err)
	}
	client := func(endpoint string) *s3.Client {
		return s3.New(s3.Options{
			Region:       cfg.Region,
			Credentials:  credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, ""),
			BaseEndpoint: aws.String(endpoint),
			UsePathStyle: cfg.PathStyle,
			// By default the SDK adds a CRC32 checksum to uploads, and to
			// presigned URLs a checksum header the uploader would have to
			// send: off, unless an operation requires one.
			RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
			ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		})
	}
	s := &S3{
		client:  client(cfg.Endpoint),
		presign: s3.NewPresignClient(client(cfg.PublicEndpoint)),
		bucket:  cfg.Bucket,
		prefix:  cfg.Prefix,
	}
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		return nil, fmt.Errorf("S3 blob store: bucket %q at %s: %w", cfg.Bucket, cfg.Endpoint, headBucketErr(err))
	}
	return s, nil
}

// headBucketErr explains why the bucket could not be reached.
func headBucketErr(err error) error {
	switch status := httpStatus(err); {
	case status == http.StatusNotFound:
		return fmt.Errorf("the bucket does not exist: create it or fix the bucket name: %w: %w", errdefs.ErrFailedPrecondition, err)
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		return fmt.Errorf("access denied: check the access key, secret key and the bucket's policy: %w: %w", errdefs.ErrPermission, err)
	case status == http.StatusMovedPermanently || status == http.StatusBadRequest:
		return fmt.Errorf("refused: check the region and path-style setting: %w: %w", errdefs.ErrFailedPrecondition, err)
	case status == 0 || status >= 500:
		return fmt.Errorf("unreachable: check the endpoint URL and that S3 is up: %w: %w", errdefs.ErrUnavailable, err)
	}
	return err
}

// PresignPut returns a URL on the public endpoint for one PUT of key. The
// client sends the body with the headers in Presigned.Headers
// (If-None-Match: *) and Content-Length, which must equal o.Size when that
// is set.
func (s *S3) PresignPut(ctx context.Context, key string, o PutOptions) (Presigned, error) {
	if err := ValidKey(key); err != nil {
		return Presigned{}, err
	}
	o, err := o.normalize()
	if err != nil {
		return Presigned{}, err
	}
	// If-None-Match: * makes the URL good for one upload: S3 refuses a PUT
	// over an existing object (412). The header is signed, so a client
	// must send it.
	in := &s3.PutObjectInput{Bucket: &s.bucket, Key: aws.String(s.prefix + key), IfNoneMatch: aws.String("*")}
	if o.Size > 0 {
		in.ContentLength = aws.Int64(o.Size)
	}
	req, err := s.presign.PresignPutObject(ctx, in, s3.WithPresignExpires(o.TTL))
	if err != nil {
		return Presigned{}, fmt.Errorf("presign upload of blob %q: %w", key, err)
	}
	p := Presigned{URL: req.URL, Method: req.Method, Headers: map[string]string{}}
	for name, v := range req.SignedHeader {
		if name = http.CanonicalHeaderKey(name); name != "Host" && name != "Content-Length" && len(v) > 0 {
			p.Headers[name] = strings.Join(v, ",")
		}
	}
	// The URL expires TTL after its signing time, which it carries.
	u, err := url.Parse(req.URL)
	if err != nil {
		return Presigned{}, fmt.Errorf("presign upload of blob %q: %w", key, err)
	}
	signed, err := time.Parse("20060102T150405Z", u.Query().Get("X-Amz-Date"))
	if err != nil {
		return Presigned{}, fmt.Errorf("presign upload of blob %q: no signing time in the URL: %w", key, err)
	}
	p.ExpiresAt = signed.Add(o.TTL)
	return p, nil
}

// Put writes key from r, which must yield exactly size bytes.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if err := checkPutSize(size); err != nil {
		return err
	}
	body := &countingReader{r: io.LimitReader(r, size)}
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        &s.bucket,
		Key:           aws.String(s.prefix + key),
		Body:          body,
		ContentLength: aws.Int64(size),
	}, s3.WithAPIOptions(
		// Don't read the body twice to hash it: integrity rides on TLS
		// (or the loopback), and readers verify digests.
		v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware,
	))
	if err != nil {
		if body.n < size && body.eof {
			return fmt.Errorf("blob %q: body has %d bytes but was declared to have %d: %w", key, body.n, size, errdefs.ErrInvalid)
		}
		return s.err(key, err)
	}
	// The request sent exactly size bytes; a longer body was a mistake.
	var extra [1]byte
	if n, _ := io.ReadFull(r, extra[:]); n > 0 {
		s.Delete(context.WithoutCancel(ctx), key)
		return fmt.Errorf("blob %q: body has more than the %d bytes it was declared to have; nothing was stored: %w", key, size, errdefs.ErrInvalid)
	}
	return nil
}

// countingReader counts what the SDK read, and whether it hit the end.
type countingReader struct {
	r   io.Reader
	n   int64
	eof bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err == io.EOF {
		c.eof = true
	}
	return n, err
}

// Open reads key.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, Info, error) {
	if err := ValidKey(key); err != nil {
		return nil, Info{}, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: aws.String(s.prefix + key)})
	if err != nil {
		return nil, Info{}, s.err(key, err)
	}
	return out.Body, Info{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Stat describes key.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: aws.String(s.prefix + key)})
	if err != nil {
		return Info{}, s.err(key, err)
	}
	return Info{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Delete removes key; S3 does not mind a missing one.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: aws.String(s.prefix + key)})
	if err != nil && !errdefs.IsNotFound(s.err(key, err)) {
		return s.err(key, err)
	}
	return nil
}

// List returns the objects whose keys start with prefix, sorted by key.
func (s *S3) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	var out []Info
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String(s.prefix + prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, s.err("list "+prefix, err)
		}
		for _, o := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
			if !ok || !strings.HasPrefix(key, prefix) || ValidKey(key) != nil {
				continue // not written by a Store
			}
			out = append(out, Info{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)})
		}
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// err gives an SDK error its errdefs kind: a missing object is
// ErrNotFound; a 5xx or a failed connection is ErrUnavailable (worth a
// retry).
func (s *S3) err(key string, err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("blob %q: %w", key, errdefs.ErrNotFound)
		case "NoSuchBucket":
			return fmt.Errorf("blob %q: the S3 bucket is gone: %w: %w", key, errdefs.ErrFailedPrecondition, err)
		}
	}
	switch status := httpStatus(err); {
	case status == http.StatusNotFound:
		return fmt.Errorf("blob %q: %w: %w", key, errdefs.ErrNotFound, err)
	case status == 0 && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return fmt.Errorf("blob %q: %w", key, err)
	case status >= 500 || status == 0 && isNetErr(err):
		return fmt.Errorf("blob %q: S3: %w: %w", key, errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("blob %q: %w", key, err)
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF)
}

// httpStatus is the status of the S3 response behind err; 0 if there was
// none (the request never got an answer).
func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}
