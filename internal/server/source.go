package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/docker/cli/cli/config/configfile"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/runner"
	"github.com/kiln-dev/kiln/internal/store"
)

// SourceConfig configures builds from uploaded source (kiln.v1.SourceBuildService).
type SourceConfig struct {
	// S3 stores uploaded contexts in a bucket; an empty Bucket keeps them
	// on local disk (DATA/blobs) behind URLs kiln signs and serves itself.
	S3 blob.S3Config
	// MaxConcurrent and MaxPerProject bound running source builds; 0 → 4 and 2.
	MaxConcurrent, MaxPerProject int
	// MaxQueuedPerProject bounds one project's waiting builds; 0 → 100.
	MaxQueuedPerProject int
	// MaxContextsPerProject bounds one project's retained uploads; 0 → 10,000.
	MaxContextsPerProject int
	// MaxContextBytesPerProject bounds the bytes of one project's retained
	// uploads; 0 → 10 GiB.
	MaxContextBytesPerProject int64
	// ContextRetention: uploaded contexts are deleted this long after their
	// upload URL was made; 0 → 7 days.
	ContextRetention time.Duration
	// UploadTTL is how long an upload URL works; 0 → 15 minutes.
	UploadTTL time.Duration
	// MaxUpload is the largest context accepted, in bytes; 0 → 1 GiB.
	MaxUpload int64
	// PushAuthFile is a Docker config.json whose "auths" are registries
	// source builds may push to besides kiln's own; "" → none.
	PushAuthFile string
	// GitPrivateHosts lets git contexts be fetched from loopback and
	// private addresses: source builds' host check (runner/githost.go) and
	// every builder's fetch proxy (builder/fetchproxy.go) let them through.
	GitPrivateHosts bool
}

// openSource wires the blob store and the runner, and mounts the upload
// URLs (local store) and kiln.v1.SourceBuildService.
func (s *Server) openSource(ctx context.Context, mux *http.ServeMux, st store.Store, authn *auth.Authenticator, builds *build.Service, projects *project.Service) error {
	cfg := s.cfg.Source
	var blobs blob.Store
	if cfg.S3.Bucket != "" {
		s3, err := blob.NewS3(ctx, cfg.S3)
		if err != nil {
			return fmt.Errorf("context storage: %w", err)
		}
		blobs = s3
	} else {
		secret, err := s.dataSecret(ctx, "blob-key", filepath.Join(s.cfg.DataDir, "blob.key"))
		if err != nil {
			return err
		}
		local, err := blob.NewLocal(blob.LocalConfig{Root: filepath.Join(s.cfg.DataDir, "blobs"), Secret: secret, BaseURL: s.publicURL})
		if err != nil {
			return err
		}
		mux.Handle("/blobs/", s.metrics.Uploads(local.Handler())) // counts bytes uploaded
		blobs = local
	}
	pushAuth, err := loadPushAuth(cfg.PushAuthFile)
	if err != nil {
		return err
	}
	// Every replica opens the secrets any other sealed (shared.go).
	key, err := s.dataSecret(ctx, "secrets-key", filepath.Join(s.cfg.DataDir, "secrets.key"))
	if err != nil {
		return err
	}
	s.runner, err = runner.New(st, blobs, builds, projects, runner.Config{
		WorkDir:                   filepath.Join(s.cfg.DataDir, "work"),
		MaxConcurrent:             cfg.MaxConcurrent,
		MaxPerProject:             cfg.MaxPerProject,
		MaxQueuedPerProject:       cfg.MaxQueuedPerProject,
		MaxContextsPerProject:     cfg.MaxContextsPerProject,
		MaxContextBytesPerProject: cfg.MaxContextBytesPerProject,
		ContextRetention:          cfg.ContextRetention,
		UploadTTL:                 cfg.UploadTTL,
		Archive:                   archive.Limits{CompressedBytes: cfg.MaxUpload},
		RegistryHost:              s.registryHost,
		PushAuth:                  pushAuth,
		GitPrivateHosts:           cfg.GitPrivateHosts,
		SecretsKey:                key,
		Cluster:                   s.cluster,
		Logger:                    s.cfg.Logger,
	})
	if err != nil {
		return err
	}
	// A dead replica's source builds run again on a live one.
	s.cluster.OnDead(s.runner.SettleDead)
	if s.cluster.Shared() && cfg.S3.Bucket == "" {
		s.cfg.Logger.Warn("uploaded contexts are kept on this replica's disk, but a source build runs on whichever replica claims it; give every replica the same bucket (--contexts-s3-bucket)")
	}
	svc := &kilnapi.SourceBuildService{Runner: s.runner, Logger: s.cfg.Logger, Resources: s.builds.Resources,
		CustomerOf: func(ctx context.Context, projectID string) string {
			p, err := st.GetProject(ctx, projectID)
			if err != nil {
				return ""
			}
			return p.CustomerID
		}}
	// Secrets and build args ride in CreateBuild: a few MiB at most.
	mux.Handle(kilnv1connect.NewSourceBuildServiceHandler(svc,
		s.apiInterceptors(authn), connect.WithReadMaxBytes(4<<20)))
	return nil
}

// loadPushAuth reads registry credentials from a Docker config.json.
func loadPushAuth(path string) ([]engine.RegistryCredential, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--push-auth-file: %w", err)
	}
	defer f.Close()
	cf := configfile.New(path)
	if err := cf.LoadFromReader(f); err != nil {
		return nil, fmt.Errorf("--push-auth-file %s: not a Docker config.json: %w", path, err)
	}
	var out []engine.RegistryCredential
	for host, a := range cf.AuthConfigs {
		if a.Username == "" || a.Password == "" {
			return nil, fmt.Errorf("--push-auth-file %s: registry %s has no user name and password (identity tokens and credential helpers are not supported): %w", path, host, errdefs.ErrInvalid)
		}
		out = append(out, engine.RegistryCredential{Host: host, Username: a.Username, Password: a.Password})
	}
	slices.SortFunc(out, func(a, b engine.RegistryCredential) int { return strings.Compare(a.Host, b.Host) })
	return out, nil
}
