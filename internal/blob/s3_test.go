package blob_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/blob/blobtest"
	"github.com/kiln-dev/kiln/internal/blob/s3test"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// newS3 opens a store on srv's bucket under prefix. kiln talks to
// 127.0.0.1; upload URLs are signed for localhost, as if that were the
// public name.
func newS3(t *testing.T, srv *s3test.Server, prefix string) *blob.S3 {
	t.Helper()
	s, err := blob.NewS3(context.Background(), s3Config(srv, prefix))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func s3Config(srv *s3test.Server, prefix string) blob.S3Config {
	return blob.S3Config{
		Endpoint:       srv.Endpoint,
		PublicEndpoint: srv.LocalhostEndpoint,
		Region:         srv.Region,
		Bucket:         srv.Bucket,
		AccessKey:      srv.AccessKey,
		SecretKey:      srv.SecretKey,
		Prefix:         prefix,
		PathStyle:      true,
	}
}

func TestS3Conformance(t *testing.T) {
	srv := s3test.Start(t)
	var n atomic.Int64
	// One server; each case has its own key prefix, so it starts empty.
	blobtest.Run(t, func(t *testing.T) blob.Store {
		return newS3(t, srv, fmt.Sprintf("case-%d/", n.Add(1)))
	})
}

// The signature covers the host: a URL signed for the public name does not
// work when sent to the same server under another name.
func TestS3SignatureCoversHost(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, "")
	p, err := s.PresignPut(context.Background(), "contexts/p1/host", blob.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(p.URL)
	public, _ := url.Parse(srv.LocalhostEndpoint)
	if u.Host != public.Host {
		t.Fatalf("URL host %q, want the public endpoint's %q", u.Host, public.Host)
	}
	internal, _ := url.Parse(srv.Endpoint)
	moved := *u
	moved.Host = internal.Host
	status, msg := blobtest.Upload(t, p, moved.String(), []byte("x"))
	if status != http.StatusForbidden {
		t.Fatalf("URL signed for %s sent to %s: status %d (%s), want 403", u.Host, moved.Host, status, msg)
	}
	missing(t, s, "contexts/p1/host")
	if status, msg := blobtest.Upload(t, p, "", []byte("x")); status != http.StatusOK {
		t.Fatalf("URL at its own host: status %d (%s)", status, msg)
	}
}

// `curl -T` works with the one header a URL lists (If-None-Match: *, which
// makes it good for one upload), even with a signed size.
func TestS3Curl(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, "kiln/")
	data := bytes.Repeat([]byte("curl "), 600_000) // big enough for curl to send Expect: 100-continue
	for i, o := range []blob.PutOptions{{}, {Size: int64(len(data)), SHA256: strings.Repeat("ab", 32)}} {
		key := fmt.Sprintf("contexts/p1/curl-%d.tar.gz", i)
		p, err := s.PresignPut(context.Background(), key, o)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Headers) != 1 || p.Headers["If-None-Match"] != "*" {
			t.Errorf("PresignPut(%+v) wants headers %v; want only If-None-Match: *", o, p.Headers)
		}
		curlUpload(t, p, data)
		info, err := s.Stat(context.Background(), key)
		if err != nil || info.Size != int64(len(data)) {
			t.Fatalf("Stat after curl upload = %+v, %v", info, err)
		}
	}
}

// Two stores with different prefixes share a bucket without seeing each
// other's objects.
func TestS3PrefixIsolation(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	a, b := newS3(t, srv, "tenant-a/"), newS3(t, srv, "tenant-b/")
	if err := a.Put(ctx, "contexts/x", strings.NewReader("a"), 1); err != nil {
		t.Fatal(err)
	}
	missing(t, b, "contexts/x")
	if got, err := b.List(ctx, ""); err != nil || len(got) != 0 {
		t.Fatalf("b.List = %v, %v; want nothing", got, err)
	}
	root := newS3(t, srv, "")
	got, err := root.List(ctx, "")
	if err != nil || len(got) != 1 || got[0].Key != "tenant-a/contexts/x" {
		t.Fatalf("unprefixed List = %+v, %v; want tenant-a/contexts/x", got, err)
	}
}

// NewS3 says what to fix when the bucket cannot be used.
func TestNewS3Errors(t *testing.T) {
	srv := s3test.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cfg := s3Config(srv, "")
	cfg.Bucket = "no-such-bucket"
	_, err := blob.NewS3(ctx, cfg)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing bucket: %v; want ErrFailedPrecondition saying it does not exist", err)
	}

	cfg = s3Config(srv, "")
	cfg.SecretKey = "wrong"
	_, err = blob.NewS3(ctx, cfg)
	if !errors.Is(err, errdefs.ErrPermission) || !strings.Contains(err.Error(), "secret key") {
		t.Errorf("wrong secret: %v; want ErrPermission naming the keys", err)
	}

	cfg = s3Config(srv, "")
	srv2 := s3test.Start(t)
	cfg.Endpoint = srv2.Endpoint
	srv2.Stop()
	_, err = blob.NewS3(ctx, cfg)
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("S3 down: %v; want ErrUnavailable naming the endpoint", err)
	}

	for name, cfg := range map[string]blob.S3Config{
		"no bucket":      {Endpoint: srv.Endpoint, AccessKey: "a", SecretKey: "b"},
		"no credentials": {Endpoint: srv.Endpoint, Bucket: "b"},
		"bad endpoint":   {Endpoint: "127.0.0.1:9000", Bucket: "b", AccessKey: "a", SecretKey: "b"},
		"bad public":     {Endpoint: srv.Endpoint, PublicEndpoint: "ftp://x", Bucket: "b", AccessKey: "a", SecretKey: "b"},
		"bad prefix":     {Endpoint: srv.Endpoint, Bucket: "b", AccessKey: "a", SecretKey: "b", Prefix: "/x"},
	} {
		if _, err := blob.NewS3(ctx, cfg); !errdefs.IsInvalid(err) {
			t.Errorf("%s: NewS3 = %v, want ErrInvalid", name, err)
		}
	}
}

// With S3 gone, operations fail as Unavailable (worth a retry), not as
// NotFound.
func TestS3Unavailable(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, "")
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Stat(ctx, "k"); !errdefs.IsUnavailable(err) {
		t.Errorf("Stat with S3 down = %v, want ErrUnavailable", err)
	}
}
