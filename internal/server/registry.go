package server

import (
	"context"
	"net/http"
	"path/filepath"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/build/v1/buildv1connect"
	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/registry"
	"github.com/kiln-dev/kiln/internal/store"
)

// RegistryConfig configures kiln's registry (`kiln serve --registry-*`).
type RegistryConfig struct {
	// S3 stores content in a bucket; an empty Bucket keeps it on local
	// disk under DATA/registry.
	S3 registry.S3Config
	// Retention of saved images in projects that set none; 0 → 7 days.
	Retention time.Duration
	// GCInterval between garbage collections; 0 → 1h.
	GCInterval time.Duration
	// GCGrace: nothing used more recently is collected; 0 → 1h.
	GCGrace time.Duration
}

// openRegistry opens kiln's registry on the data directory.
func (s *Server) openRegistry(ctx context.Context, st store.Store, authn *auth.Authenticator) (*registry.Registry, error) {
	rc := s.cfg.Registry
	var s3 *registry.S3Config
	if rc.S3.Bucket != "" {
		s3 = &rc.S3
	}
	var secret registry.SecretFunc
	if s.cluster.Shared() {
		// A registry token or an upload from one replica is good on any.
		secret = s.cluster.Secret
	}
	return registry.New(ctx, registry.Config{
		Secret:    secret,
		Exclusive: s.cluster.Exclusive, // one replica collects at a time
		Dir:       filepath.Join(s.cfg.DataDir, "registry"),
		S3:        s3,
		// With no --public-url the token realm follows the host the client
		// reached the registry at.
		PublicURL: func() string { return s.cfg.PublicURL },
		Store:     st,
		// Builders come over TLS, clients (who fetch the tokens) over plain
		// HTTP on a default server; see listen.go.
		RealmScheme: s.realmScheme(),
		Authn:       authn,
		Audit:       authn.Audit,
		Retention:   rc.Retention,
		GCInterval:  rc.GCInterval,
		GCGrace:     rc.GCGrace,
		// A build's registry connections are closed when it ends (conns.go).
		BuildRequest: s.conns.request,
		Logger:       s.cfg.Logger,
	})
}

// mountRegistry serves the registry at /v2/ (its own auth, not the
// Connect interceptor's), Depot's RegistryService and kiln.v1's
// RegistryAdminService.
func (s *Server) mountRegistry(mux *http.ServeMux, authn *auth.Authenticator, reg *registry.Registry) {
	mux.Handle("/v2/", s.metrics.Registry(reg)) // counts bytes pushed and pulled
	opts := []connect.HandlerOption{s.apiInterceptors(authn), connect.WithReadMaxBytes(1 << 20)}
	mux.Handle(buildv1connect.NewRegistryServiceHandler(&depot.RegistryService{Images: reg, Logger: s.cfg.Logger}, opts...))
	mux.Handle(kilnv1connect.NewRegistryAdminServiceHandler(&kilnapi.RegistryAdminService{Registry: reg, Logger: s.cfg.Logger}, opts...))
}

// realmScheme is "http" on a default server, whose clients speak plain HTTP
// on loopback while its builders reach the registry over TLS; "" (follow
// the request) on a TLS-only one.
func (s *Server) realmScheme() string {
	if s.cfg.TLS == TLSDefault {
		return "http"
	}
	return ""
}
