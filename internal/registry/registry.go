package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// Defaults for Config's zero values.
const (
	DefaultRetention  = 7 * 24 * time.Hour
	DefaultGCInterval = time.Hour
	DefaultGCGrace    = time.Hour
)

// Store is what the registry needs of kiln's store.
type Store interface {
	GetProject(ctx context.Context, id string) (project.Project, error)
	ListProjects(ctx context.Context, orgID string) ([]project.Project, error)
	GetToken(ctx context.Context, id string) (auth.Token, error)
	// TrustPoliciesExist reports whether every policy of ids still exists.
	TrustPoliciesExist(ctx context.Context, ids []string) (bool, error)
	store.RegistryIndex
}

// Config configures a Registry.
type Config struct {
	// Dir holds the registry's keys (token-key.pem, upload-secret) and,
	// unless S3 is set, its content. Usually DATA/registry.
	Dir string
	// S3, if set with a bucket, stores content in S3 instead of Dir.
	S3 *S3Config
	// PublicURL returns the base URL clients reach kiln at; the token
	// realm is its scheme and host + "/v2/token". Nil or "" → the scheme and host
	// the request came to.
	PublicURL func() string
	// RealmScheme, if set, is the token realm's scheme when PublicURL is
	// not set, whatever the request came over: "http" on a server that
	// serves plain HTTP to its clients and TLS to its builders, so that the
	// client fetching a token (the build's session) reaches the realm the
	// way it reaches the API.
	RealmScheme string
	Store       Store
	Authn       Authenticator
	// Audit, if set, records refused requests (audit.KindDenied events, as
	// the Connect API's): bad credentials and 403s, never the anonymous
	// first request every client makes before it authenticates.
	Audit func(ctx context.Context, event string, attrs ...any)
	// Retention is how long saved images are kept in a project that sets
	// none; 0 → DefaultRetention.
	Retention time.Duration
	// GCInterval is the time between garbage collections; 0 → DefaultGCInterval.
	GCInterval time.Duration
	// GCGrace: the collector never deletes a blob, manifest, tag or upload
	// session used within this long, and purges upload sessions idle
	// longer; 0 → DefaultGCGrace. A push must finish within it.
	GCGrace time.Duration
	// Now is the registry's clock: what the collector compares push, use
	// and storage times against, and what registry tokens are issued and
	// checked by. Nil → time.Now. Tests move it forward instead of waiting
	// out grace periods and retentions.
	Now func() time.Time
	// BuildRequest, if set, is told the build an authenticated request was
	// made for (its caller holds a build's token, or a registry token
	// issued for one), before the request is served. The server tags the
	// request's connection with it, to close the connection once the build
	// ends: buildkitd opens its push connections per build session and
	// never reuses them after it.
	BuildRequest func(ctx context.Context, buildID string)
	// Secret, if set, keeps the token key and the upload secret in a store
	// every replica shares (cluster.Cluster.Secret), so a registry token
	// or an upload from one replica is good on any other; nil keeps them
	// in Dir.
	Secret SecretFunc
	// Exclusive, if set, runs each garbage collection of Run under it
	// (cluster.Cluster.Exclusive): one replica collects at a time, and a
	// replica whose turn it is not skips the tick (ran false).
	Exclusive func(ctx context.Context, name string, fn func(ctx context.Context) error) (ran bool, err error)
	Logger    *slog.Logger
}

// SecretFunc is a shared secret store: the value under name if one was
// stored, else make's, stored for the others (cluster.Cluster.Secret).
type SecretFunc func(ctx context.Context, name string, make func() ([]byte, error)) ([]byte, error)

// apiVersionHeader is on every answer, once: distribution adds its own to
// the answers it serves (serveWatched drops kiln's first).
const apiVersionHeader = "Docker-Distribution-API-Version"

// Registry is kiln's OCI registry. It is an http.Handler for "/v2/".
type Registry struct {
	cfg    Config
	log    *slog.Logger
	app    *handlers.App
	driver storagedriver.StorageDriver
	// ns is distribution's view of the same storage, for the collector
	// and the image calls.
	ns     distribution.Namespace
	tokens *tokenSigner
	pins   *pins
	// gcMu: one collection at a time (the loop, CollectGarbage).
	gcMu sync.Mutex
}

// New opens the registry's storage and keys.
func New(ctx context.Context, cfg Config) (reg *Registry, err error) {
	if cfg.Dir == "" || cfg.Store == nil || cfg.Authn == nil {
		return nil, errors.New("registry: Dir, Store and Authn are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = DefaultGCInterval
	}
	if cfg.GCGrace <= 0 {
		cfg.GCGrace = DefaultGCGrace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Registry{cfg: cfg, log: cfg.Logger.With("component", "registry"), pins: newPins(cfg.Now)}
	keyPath, secretPath := filepath.Join(cfg.Dir, "token-key.pem"), filepath.Join(cfg.Dir, "upload-secret")
	var secret string
	if cfg.Secret != nil {
		if r.tokens, err = sharedKey(ctx, cfg.Secret, keyPath); err != nil {
			return nil, err
		}
		secret, err = sharedUploadSecret(ctx, cfg.Secret, secretPath)
	} else {
		if r.tokens, err = loadOrCreateKey(keyPath); err != nil {
			return nil, err
		}
		secret, err = loadOrCreateSecret(secretPath)
	}
	if err != nil {
		return nil, err
	}
	d, err := newDriver(ctx, cfg.Dir, cfg.S3)
	if err != nil {
		return nil, err
	}
	r.driver = fullDriver{StorageDriver: d} // full.go
	bridgeLogs(r.log)
	// distribution panics on configuration it cannot use.
	defer func() {
		if p := recover(); p != nil {
			reg, err = nil, fmt.Errorf("registry: %v", p)
		}
	}()
	r.app = handlers.NewApp(context.WithoutCancel(ctx), appConfig(r.driver, secret))
	if r.ns, err = storage.NewRegistry(context.WithoutCancel(ctx), r.driver, storage.EnableDelete); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return r, nil
}

// Close stops distribution's background work.
func (r *Registry) Close() error { return r.app.Shutdown() }

// need is one access a request requires.
type need struct {
	repo string
	act  action
	// optional: without it the request still proceeds, only without the
	// part that needs it (a cross-repository mount source).
	optional bool
}

// needsOf lists what a request on rt requires.
func needsOf(rt route, req *http.Request) []need {
	read := req.Method == http.MethodGet || req.Method == http.MethodHead
	switch rt.kind {
	case routeTags, routeReferrers:
		return []need{{repo: rt.name, act: actPull}}
	case routeManifest, routeBlob:
		switch {
		case read:
			return []need{{repo: rt.name, act: actPull}}
		case req.Method == http.MethodDelete:
			return []need{{repo: rt.name, act: actDelete}}
		}
		return []need{{repo: rt.name, act: actPush}}
	case routeUploadStart:
		n := []need{{repo: rt.name, act: actPush}}
		if from := req.URL.Query().Get("from"); from != "" && req.URL.Query().Get("mount") != "" {
			n = append(n, need{repo: from, act: actPull, optional: true})
		}
		return n
	case routeUpload:
		return []need{{repo: rt.name, act: actPush}}
	}
	return nil
}

// ServeHTTP serves /v2/: the token endpoint, then authentication and
// authorization of every other request, then kiln's own endpoints
// (referrers, catalog) or distribution.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set(apiVersionHeader, "registry/2.0")
	rt, oerr := parseRoute(req.URL.Path)
	if oerr == nil {
		oerr = tagRefused(rt, req.Method)
	}
	if oerr != nil {
		oerr.write(w)
		return
	}
	if rt.kind == routeToken {
		r.serveToken(w, req)
		return
	}
	c, ok := r.admit(w, req, rt)
	if !ok {
		return
	}
	if c.p.Kind == auth.TokenBuild && r.cfg.BuildRequest != nil {
		r.cfg.BuildRequest(req.Context(), c.p.BuildID)
	}
	if !r.authorize(w, req, rt, c) {
		return
	}
	r.dispatch(w, req, rt, c)
}

// admit authenticates the request and refuses what no caller may send (a
// form-encoded body) and what an anonymous caller may not reach (the base
// and catalog endpoints). On a refusal it answers and reports false.
func (r *Registry) admit(w http.ResponseWriter, req *http.Request, rt route) (caller, bool) {
	ctx := req.Context()
	c, err := r.authenticate(req)
	if err != nil {
		if errors.Is(err, errBadCredentials) {
			r.auditDenied(ctx, req, caller{}, rt, "invalid or expired credentials")
			r.challenge(w, rt, req, "invalid_token", "invalid or expired credentials")
			return caller{}, false
		}
		r.internalError(ctx, w, "authenticate", err)
		return caller{}, false
	}
	if formBody(req) {
		// Before authorization: what it checks (the query) must be all
		// distribution reads (params.go).
		r.auditDenied(ctx, req, c, rt, "form-encoded body")
		errFormBody.write(w)
		return caller{}, false
	}
	if c.anonymous && (rt.kind == routeBase || rt.kind == routeCatalog) {
		r.challenge(w, rt, req, "", "authentication required")
		return caller{}, false
	}
	return c, true
}

// authorize checks each need of the request against c's rights in the
// repository's project and, for a registry token, against what the token
// grants. On a refusal it answers and reports false; an optional need c
// lacks is dropped from the request instead.
func (r *Registry) authorize(w http.ResponseWriter, req *http.Request, rt route, c caller) bool {
	ctx := req.Context()
	if reason := buildScopeRefusal(c, rt); reason != "" { // buildscope.go
		r.auditDenied(ctx, req, c, rt, reason)
		errDenied.write(w)
		return false
	}
	cache := rightsCache{}
	for _, n := range needsOf(rt, req) {
		if n.optional && !validRepository(n.repo) {
			dropMount(req)
			continue
		}
		have, err := r.rights(ctx, c, projectOf(n.repo), cache)
		if err != nil {
			r.internalError(ctx, w, "authorize", err)
			return false
		}
		granted := c.grants == nil || c.grants[n.repo].Has(n.act)
		switch {
		case have.Has(n.act) && granted:
		case n.optional && have.Has(n.act):
			// The principal may read the mount's source, but its registry
			// token does not say so (a client reusing the token it got for
			// the target alone): it asks for both scopes and retries,
			// instead of uploading a blob the registry has.
			r.challenge(w, rt, req, "insufficient_scope", "the registry token does not grant pull on "+n.repo+", the mount's source")
			return false
		case n.optional:
			// Mounting from a repository the caller may not read is not
			// refused, only not done: the client gets an upload session,
			// the same answer as for a blob the source does not have.
			dropMount(req)
		case !have.Has(n.act) && c.anonymous:
			r.challenge(w, rt, req, "", "authentication required")
			return false
		case !have.Has(n.act):
			r.auditDenied(ctx, req, c, rt, "no "+n.act.String()+" access to the repository")
			errDenied.write(w)
			return false
		default:
			// The principal may, but its registry token does not say so:
			// the client asks the token endpoint for this scope and retries.
			r.challenge(w, rt, req, "insufficient_scope", "the registry token does not grant "+n.act.String()+" on "+n.repo)
			return false
		}
	}
	return true
}

// dispatch serves an authorized request: kiln's own endpoints, or
// distribution with the pins (pins.go) of what the request uses held
// around it.
func (r *Registry) dispatch(w http.ResponseWriter, req *http.Request, rt route, c caller) {
	switch rt.kind {
	case routeCatalog:
		r.serveCatalog(w, req, c)
	case routeReferrers:
		r.serveReferrers(w, req, rt)
	case routeManifest:
		switch {
		case rt.badTag:
			// Only reads and deletes get here (tagRefused).
			errManifestUnknown.write(w)
		case req.Method == http.MethodPut:
			r.putManifest(w, req, rt)
		case req.Method == http.MethodDelete:
			r.deleteManifest(w, req, rt)
		default:
			if rt.dgst != "" {
				r.pins.touch(digestKey(rt.dgst.String()))
			}
			r.serveWatched(w, req)
		}
	case routeBlob:
		r.pins.touch(digestKey(rt.dgst.String()))
		r.serveWatched(answerDigest(w, rt.dgst.String()), req)
	case routeUploadStart:
		r.startUpload(w, req, rt)
	case routeUpload:
		r.continueUpload(w, req, rt)
	default:
		r.serveWatched(w, req)
	}
}

// startUpload serves an upload start (POST): a plain one, a single-request
// monolithic upload (digest=, monolithicUpload) or a cross-repository mount
// (mount=), with the blobs it names pinned while distribution serves it and
// the new session after.
func (r *Registry) startUpload(w http.ResponseWriter, req *http.Request, rt route) {
	q := req.URL.Query()
	if q.Get("mount") == "" {
		if q.Has("digest") {
			r.monolithicUpload(w, req, rt, q.Get("digest"))
			return
		}
		if req.ContentLength > 0 {
			// distribution would drop the body and open a session: the
			// client would believe its blob stored.
			errBodyWithoutDigest.write(w)
			return
		}
	}
	var keys []string
	for _, d := range []string{q.Get("mount"), q.Get("digest")} {
		if _, err := digest.Parse(d); err == nil {
			keys = append(keys, digestKey(d))
		}
	}
	end := r.pins.begin(keys...)
	r.serveWatched(w, req)
	end()
	if id := w.Header().Get("Docker-Upload-UUID"); id != "" {
		r.pins.touch(uploadKey(rt.name, id))
	}
}

// continueUpload serves a request on an upload session (PATCH, PUT,
// GET, DELETE), with the session and the blob it commits pinned.
func (r *Registry) continueUpload(w http.ResponseWriter, req *http.Request, rt route) {
	// An upload that does not exist (never started, finished, purged)
	// is BLOB_UPLOAD_UNKNOWN, whatever state the URL carries.
	if _, err := r.driver.Stat(req.Context(), repoPath(rt.name, "_uploads", rt.ref, "startedat")); isNotFound(err) {
		newOCIError(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry").write(w)
		return
	}
	keys := []string{uploadKey(rt.name, rt.ref)}
	if d := req.URL.Query().Get("digest"); d != "" {
		if _, err := digest.Parse(d); err == nil {
			keys = append(keys, digestKey(d))
		}
	}
	end := r.pins.begin(keys...)
	defer end()
	r.serveWatched(answerDigest(w, req.URL.Query().Get("digest")), req)
}

// dropMount turns a mount request into a plain upload start.
func dropMount(req *http.Request) {
	q := req.URL.Query()
	q.Del("mount")
	q.Del("from")
	req.URL.RawQuery = q.Encode()
}

// challenge answers 401 with the bearer challenge for what rt needs.
// errCode is "" (no credentials), "invalid_token" or "insufficient_scope".
func (r *Registry) challenge(w http.ResponseWriter, rt route, req *http.Request, errCode, msg string) {
	realm := r.baseURL(req) + "/v2/token"
	h := fmt.Sprintf(`Bearer realm=%q,service=%q`, realm, service)
	if needs := needsOf(rt, req); len(needs) > 0 {
		// Every scope the request needs, space-separated (Docker's token
		// spec): a mount's source with its target.
		var scopes []string
		for _, n := range needs {
			if !validRepository(n.repo) {
				continue
			}
			a := n.act
			if a&actPush != 0 {
				a |= actPull // pushing clients HEAD first; one token serves both
			}
			scopes = append(scopes, fmt.Sprintf("repository:%s:%s", n.repo, a))
		}
		h += fmt.Sprintf(`,scope=%q`, strings.Join(scopes, " "))
	} else if rt.kind == routeCatalog {
		h += `,scope="registry:catalog:*"`
	}
	if errCode != "" {
		h += fmt.Sprintf(`,error=%q`, errCode)
	}
	if errCode == "" && req.ProtoMajor == 1 {
		// A client without credentials comes back with a token, and
		// buildkitd often on another of its connections: this one would
		// sit idle, tied to no build (conns.go in the server closes a
		// build's when it ends). Nothing is kept open for a caller that
		// showed no credentials.
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("WWW-Authenticate", h)
	newOCIError(http.StatusUnauthorized, "UNAUTHORIZED", msg).write(w)
}

// internalError logs err and answers 500 without internals.
func (r *Registry) internalError(ctx context.Context, w http.ResponseWriter, what string, err error) {
	r.log.ErrorContext(ctx, "registry request failed", "what", what, "err", err)
	errInternal.write(w)
}

// badCredentials reports an authenticator refusal (as opposed to a failure).
func (r *Registry) badCredentials(err error) bool {
	return errors.Is(err, errBadCredentials) || isAuthRefusal(err)
}

// auditDenied records a refused request. The procedure names the route
// kind (the server's vocabulary); the repository is a validated name.
func (r *Registry) auditDenied(ctx context.Context, req *http.Request, c caller, rt route, reason string) {
	if r.cfg.Audit == nil {
		return
	}
	code := "PermissionDenied"
	if c.p.OrgID == "" {
		code = "Unauthenticated"
	}
	attrs := []any{"procedure", "registry " + req.Method + " " + routeNames[rt.kind], "code", code, "reason", reason, "peer", req.RemoteAddr}
	if rt.name != "" {
		attrs = append(attrs, "repository", rt.name)
	}
	if c.p.OrgID != "" {
		attrs = append(attrs, "org_id", c.p.OrgID, "actor", c.p.TokenID, "token_kind", c.p.Kind)
		if c.p.ProjectID != "" {
			attrs = append(attrs, "project_id", c.p.ProjectID)
		}
	}
	r.cfg.Audit(ctx, audit.KindDenied, attrs...)
}

var routeNames = map[routeKind]string{
	routeBase: "base", routeToken: "token", routeCatalog: "catalog", routeTags: "tags",
	routeManifest: "manifest", routeBlob: "blob", routeUploadStart: "upload", routeUpload: "upload",
	routeReferrers: "referrers",
}

// baseURL is the configured public URL, else the scheme and host the
// request came to (a client that sends a bogus Host only misleads itself).
func (r *Registry) baseURL(req *http.Request) string {
	if r.cfg.PublicURL != nil {
		// The registry answers at the root (/v2/), whatever path the
		// public URL has.
		if u, err := url.Parse(r.cfg.PublicURL()); err == nil && u.Scheme != "" && u.Host != "" {
			return u.Scheme + "://" + u.Host
		}
	}
	scheme := "http"
	if req.TLS != nil {
		scheme = "https"
	}
	if r.cfg.RealmScheme != "" {
		scheme = r.cfg.RealmScheme
	}
	return scheme + "://" + req.Host
}
