package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/distribution/distribution/v3/configuration"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	s3 "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// S3Config stores the registry's content in an S3 bucket (distribution's
// s3-aws driver) instead of on local disk. Credentials come from the
// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// shared config files, or an instance role): never from flags.
type S3Config struct {
	Bucket string
	// Region is the bucket's region; "" → us-east-1.
	Region string
	// Endpoint is an S3-compatible server's URL (path-style addressing);
	// "" → AWS. An http:// endpoint is spoken to without TLS.
	Endpoint string
}

// newDriver opens the storage: S3 when configured, else local disk at dir.
func newDriver(ctx context.Context, dir string, s3cfg *S3Config) (storagedriver.StorageDriver, error) {
	if s3cfg != nil && s3cfg.Bucket != "" {
		params := map[string]any{
			"bucket": s3cfg.Bucket,
			"region": s3cfg.Region,
			// Large layers go up in 10 MiB parts.
			"chunksize": 10 << 20,
		}
		if s3cfg.Region == "" {
			params["region"] = "us-east-1"
		}
		if s3cfg.Endpoint != "" {
			params["regionendpoint"] = s3cfg.Endpoint
			params["forcepathstyle"] = true
			params["secure"] = !strings.HasPrefix(s3cfg.Endpoint, "http://")
		}
		d, err := s3.FromParameters(ctx, params)
		if err != nil {
			return nil, fmt.Errorf("registry S3 storage: %w", err)
		}
		return walkNotFoundDriver{d}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry storage: %w", err)
	}
	d, err := filesystem.FromParameters(map[string]any{"rootdirectory": dir})
	if err != nil {
		return nil, fmt.Errorf("registry storage: %w", err)
	}
	return ownerOnlyDriver{StorageDriver: d, root: filepath.Clean(dir)}, nil
}

// walkNotFoundDriver makes Walk of a path that does not exist fail with
// PathNotFoundError, as the filesystem driver's does. distribution's S3
// driver walks a missing prefix as an empty one, so listing the tags of a
// repository never pushed answered 200 with no tags instead of the spec's
// 404 NAME_UNKNOWN (found against a real S3 server, TestRegistryOnS3).
type walkNotFoundDriver struct{ storagedriver.StorageDriver }

func (d walkNotFoundDriver) Walk(ctx context.Context, from string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	seen := false
	err := d.StorageDriver.Walk(ctx, from, func(fi storagedriver.FileInfo) error {
		seen = true
		return f(fi)
	}, opts...)
	if err != nil || seen {
		return err
	}
	if _, serr := d.StorageDriver.Stat(ctx, from); serr != nil {
		var nf storagedriver.PathNotFoundError
		if errors.As(serr, &nf) {
			return storagedriver.PathNotFoundError{Path: from, DriverName: d.Name()}
		}
	}
	return nil
}

// ownerOnlyDriver is distribution's filesystem driver with what it writes
// made the owner's only: it creates files 0666 and directories 0777 (less
// the umask), and nothing in kiln's data directory is for other users.
// Each write restricts its file (0600) and the directories above it that
// are not yet (0700).
type ownerOnlyDriver struct {
	storagedriver.StorageDriver
	root string
}

func (d ownerOnlyDriver) PutContent(ctx context.Context, p string, content []byte) error {
	if err := d.StorageDriver.PutContent(ctx, p, content); err != nil {
		return err
	}
	return d.restrict(p)
}

func (d ownerOnlyDriver) Writer(ctx context.Context, p string, append bool) (storagedriver.FileWriter, error) {
	w, err := d.StorageDriver.Writer(ctx, p, append)
	if err != nil {
		return nil, err
	}
	if err := d.restrict(p); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

func (d ownerOnlyDriver) Move(ctx context.Context, src, dst string) error {
	if err := d.StorageDriver.Move(ctx, src, dst); err != nil {
		return err
	}
	return d.restrict(dst)
}

// restrict makes p's file 0600 and its directories up to the root 0700,
// stopping at the first that already is (those above it were restricted
// with it).
func (d ownerOnlyDriver) restrict(p string) error {
	full := filepath.Join(d.root, filepath.FromSlash(p))
	if err := os.Chmod(full, 0o600); err != nil {
		return fmt.Errorf("registry storage: %w", err)
	}
	for dir := filepath.Dir(full); strings.HasPrefix(dir, d.root+string(filepath.Separator)); dir = filepath.Dir(dir) {
		fi, err := os.Lstat(dir)
		if err != nil {
			return fmt.Errorf("registry storage: %w", err)
		}
		if fi.Mode().Perm() == 0o700 {
			break
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("registry storage: %w", err)
		}
	}
	return nil
}

// sharedDriver is the storage driver factory distribution's App is
// configured with: it hands back the driver kiln opened (passed in the
// parameters), so the App and the garbage collector share one instance.
type sharedDriver struct{}

const sharedDriverName = "kiln-shared"

func (sharedDriver) Create(_ context.Context, params map[string]any) (storagedriver.StorageDriver, error) {
	d, ok := params["driver"].(storagedriver.StorageDriver)
	if !ok {
		return nil, errors.New("kiln-shared storage driver: no driver passed")
	}
	return d, nil
}

var registerShared sync.Once

// appConfig is distribution's configuration for kiln: the shared driver,
// deletes on, its own auth, upload purging and redirects off (kiln's
// collector purges uploads; clients may not reach the bucket), relative
// Location headers (kiln may sit behind a proxy), quiet logs.
func appConfig(d storagedriver.StorageDriver, secret string) *configuration.Configuration {
	registerShared.Do(func() { factory.Register(sharedDriverName, sharedDriver{}) })
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			sharedDriverName: configuration.Parameters{"driver": d},
			"delete":         configuration.Parameters{"enabled": true},
			"redirect":       configuration.Parameters{"disable": true},
			"maintenance": configuration.Parameters{
				"uploadpurging": map[any]any{"enabled": false},
			},
		},
	}
	cfg.HTTP.Secret = secret
	cfg.HTTP.RelativeURLs = true
	cfg.Log.AccessLog.Disabled = true
	cfg.Log.Level = "warn"
	// A page of tags is at most this long; a larger n gets a Link header.
	cfg.Tags.MaxTags = 1000
	// Non-distributable layers (image-spec's foreign layers) are named by
	// URL and never pushed; distribution refuses any URL in a manifest
	// unless allowed. The registry never fetches them: clients do, from
	// wherever the image's author put them.
	cfg.Validation.Manifests.URLs.Allow = []string{`^https?://`}
	return cfg
}

// sharedUploadSecret is the upload secret in the store every replica
// shares, so an upload started on one replica continues on another: the
// first replica's file if it has one, else a new secret.
func sharedUploadSecret(ctx context.Context, secret SecretFunc, path string) (string, error) {
	b, err := secret(ctx, "registry/upload-secret", func() ([]byte, error) {
		b, err := os.ReadFile(path)
		if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
			return []byte(strings.TrimSpace(string(b))), nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		raw := make([]byte, 32)
		rand.Read(raw)
		return []byte(hex.EncodeToString(raw)), nil
	})
	if err != nil {
		return "", fmt.Errorf("registry upload secret: %w", err)
	}
	return string(b), nil
}

// loadOrCreateSecret returns the secret distribution signs upload state
// with, kept in a 0600 file so uploads survive a restart.
func loadOrCreateSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("registry upload secret: %w", err)
	}
	raw := make([]byte, 32)
	rand.Read(raw)
	s := hex.EncodeToString(raw)
	if err := writeFileAtomic(path, []byte(s+"\n")); err != nil {
		return "", fmt.Errorf("registry upload secret: %w", err)
	}
	return s, nil
}

// Storage layout (distribution's, stable across its versions):
//
//	/docker/registry/v2/blobs/<alg>/<hex[:2]>/<hex>/data
//	/docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link
//	/docker/registry/v2/repositories/<name>/_manifests/revisions/<alg>/<hex>/link
//	/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//	/docker/registry/v2/repositories/<name>/_uploads/<id>/{data,startedat,hashstates/…}
const (
	storageRoot = "/docker/registry/v2"
	reposRoot   = storageRoot + "/repositories"
)

func blobDataPath(d digest.Digest) string {
	h := d.Encoded()
	return path.Join(storageRoot, "blobs", d.Algorithm().String(), h[:2], h, "data")
}

func repoPath(repo string, parts ...string) string {
	return path.Join(append([]string{reposRoot, repo}, parts...)...)
}

// listRepos walks the repositories directory: a directory holding
// _manifests, _layers or _uploads is a repository. Invalid names (not
// written through kiln) are skipped.
func listRepos(ctx context.Context, d storagedriver.StorageDriver) ([]string, error) {
	var out []string
	var walk func(dir string, depth int) error
	walk = func(dir string, depth int) error {
		if depth > 64 {
			return nil
		}
		children, err := d.List(ctx, dir)
		if err != nil {
			var nf storagedriver.PathNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return err
		}
		isRepo := false
		for _, c := range children {
			base := path.Base(c)
			if base == "_manifests" || base == "_layers" || base == "_uploads" {
				isRepo = true
				continue
			}
			if strings.HasPrefix(base, "_") {
				continue
			}
			if err := walk(c, depth+1); err != nil {
				return err
			}
		}
		if isRepo {
			name := strings.TrimPrefix(dir, reposRoot+"/")
			if validRepository(name) {
				out = append(out, name)
			}
		}
		return nil
	}
	if err := walk(reposRoot, 0); err != nil {
		return nil, err
	}
	return out, nil
}

// hasContent reports whether repo holds a manifest or a blob, which is
// what makes it a repository to list. Opening an upload session creates
// the repository's directory, and deletes leave the emptied directories of
// links behind: neither is content.
func hasContent(ctx context.Context, d storagedriver.StorageDriver, repo string) (bool, error) {
	for _, dir := range []string{repoPath(repo, "_manifests", "revisions"), repoPath(repo, "_layers")} {
		algs, err := d.List(ctx, dir)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		for _, alg := range algs {
			entries, err := d.List(ctx, alg)
			if isNotFound(err) {
				continue
			}
			if err != nil {
				return false, err
			}
			for _, e := range entries {
				_, err := d.Stat(ctx, path.Join(e, "link"))
				if err == nil {
					return true, nil
				}
				if !isNotFound(err) {
					return false, err
				}
			}
		}
	}
	return false, nil
}

// isNotFound reports a storage driver's "no such path".
func isNotFound(err error) bool {
	var nf storagedriver.PathNotFoundError
	return errors.As(err, &nf)
}

// logrus is distribution's logger. Its output goes to kiln's slog logger
// (warnings and errors only; distribution logs every request at info).
var (
	bridgeOnce   sync.Once
	bridgeLogger atomic.Pointer[slog.Logger]
)

type logrusBridge struct{}

func (logrusBridge) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (logrusBridge) Fire(e *logrus.Entry) error {
	l := bridgeLogger.Load()
	if l == nil {
		return nil
	}
	// distribution logs every error answer; those are the client's
	// (unknown manifests, bad digests), except its catch-all "unknown".
	if code, ok := e.Data["err.code"]; ok && fmt.Sprint(code) != "unknown error" {
		return nil
	}
	attrs := []any{"component", "distribution"}
	for k, v := range e.Data {
		// Request details (headers, remote address) stay out of kiln's log;
		// errors and the route are what an operator needs.
		if k == "err.code" || k == "err.message" || k == "err.detail" || k == "vars.name" || k == "http.request.method" || k == "error" {
			attrs = append(attrs, k, fmt.Sprint(v))
		}
	}
	level := slog.LevelWarn
	if e.Level <= logrus.ErrorLevel {
		level = slog.LevelError
	}
	l.Log(context.Background(), level, e.Message, attrs...)
	return nil
}

func bridgeLogs(l *slog.Logger) {
	bridgeLogger.Store(l)
	bridgeOnce.Do(func() {
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.WarnLevel)
		logrus.AddHook(logrusBridge{})
	})
}
