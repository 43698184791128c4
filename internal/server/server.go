// Package server composes kiln's control plane: it opens the data
// directory (database, CA, builder state), bootstraps the first admin
// token, wires the domain services to the builder fleet, and serves every
// API on one listener (HTTP/1.1 and h2c; Connect, gRPC and gRPC-Web).
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/follow"
	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/metrics"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/registry"
	"github.com/kiln-dev/kiln/internal/runner"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/telemetry"
)

// Config is `kiln serve`'s configuration.
type Config struct {
	DataDir       string
	Addr          string        // host:port to listen on
	BuildkitdPath string        // the buildkitd binary builders run
	HealthTimeout time.Duration // cancel builds silent this long; 0 → 5m
	BuilderIdle   time.Duration // stop builders idle this long; 0 → 10m
	BuilderStall  time.Duration // restart a builder in use that does not answer this long; 0 → 60s
	// BuilderMemory caps each builder's memory (buildkitd and its RUN
	// steps), in bytes; 0: no limit (docs/operating.md "Builder resources").
	BuilderMemory int64
	// PublicURL is the base URL users reach the server at (device-login
	// approve links); "" → http://<bound listen address>.
	PublicURL string
	// AuditRetention: audit events older than this are pruned; 0 → 90 days.
	AuditRetention time.Duration
	// InsecureRegistries are registries ("host[:port]") builders push to
	// and pull from over plain HTTP. kiln's own registry is never one:
	// builders reach it over TLS (listen.go).
	InsecureRegistries []string
	// TLS is the listener's mode: TLSDefault (plain HTTP, and TLS with
	// kiln's certificate on the same port), TLSAuto or TLSFiles (TLS only;
	// see listen.go). TLSCert and TLSKey are the operator's files for
	// TLSFiles.
	TLS             string
	TLSCert, TLSKey string
	// BuilderNetwork configures the private networks of RUN steps.
	BuilderNetwork builder.Network
	// BuilderEnv names variables of kiln's environment builders get (proxy
	// settings); nothing else of it reaches them.
	BuilderEnv []string
	// OIDC says which CI providers' tokens are trusted (issuers, audience);
	// the zero value trusts none.
	OIDC oidc.Config
	// Registry configures kiln's registry at /v2/ (registry.go).
	Registry RegistryConfig
	// Source configures builds from uploaded source (source.go).
	Source SourceConfig
	Logger *slog.Logger

	// AdminAddr is the admin listener's host:port (/debug/pprof, no
	// authentication: admin.go); "" turns it off. AdminOptional says it is
	// the default address: if another process holds it, kiln serves without
	// the admin listener rather than not at all.
	AdminAddr     string
	AdminOptional bool

	// BodyTimeout drops a request whose body sends nothing for this long;
	// StreamBodyTimeout is the same for client-streaming procedures, whose
	// messages may be minutes apart (guard.go). 0 → 30s and 10m.
	BodyTimeout, StreamBodyTimeout time.Duration

	// ClickHouse configures the export of finished builds (URL "" → none);
	// the server sets its Dir (DATA/telemetry), Source and Logger.
	ClickHouse telemetry.Config

	// Store is where the control plane's state lives (store.Open):
	// "" → DATA/kiln.db, "sqlite:PATH" or "postgres://…". It may hold a
	// password: log it only through store.Redact.
	Store string
	// ClusterKeyFile holds the cluster key (cluster.LoadKey): with it,
	// several replicas share one Postgres store (cluster.go). ReplicaID
	// names this one ("" → DATA/replica-id); AdvertiseURL is its own URL
	// when PublicURL is a load balancer's ("" → PublicURL).
	ClusterKeyFile string
	ReplicaID      string
	AdvertiseURL   string

	// BuilderDriver runs builders as processes on this machine
	// (DriverLocal, the default) or as pods on Kubernetes
	// (DriverKubernetes, configured by Kube).
	BuilderDriver string
	Kube          KubeConfig
}

// Server is a running control plane.
type Server struct {
	cfg      Config
	store    store.Store
	fleet    builders
	builds   *build.Service
	gateway  *gateway.Gateway
	follow   *follow.Follower // records every build's steps from its builder
	metrics  *metrics.Metrics // served at /metrics (admin.go)
	ca       *pki.Authority
	http     *http.Server
	listener net.Listener // the TCP listener; the HTTP server serves mux
	mux      *connMux
	conns    *buildConns // the HTTP server's connections, by build (conns.go)
	// admin serves /debug/pprof on adminListener; both nil when it is off.
	admin         *http.Server
	adminListener net.Listener
	audit         *audit.Recorder
	registry      *registry.Registry
	runner        *runner.Runner
	telemetry     *telemetry.Exporter // nil without --clickhouse-url
	cluster       *cluster.Cluster    // this replica's membership (cluster.go)
	clusterDone   chan struct{}       // closed when its heartbeat loop has stopped
	stopCluster   context.CancelFunc  // stops it: after this replica's builds are settled
	peers         *peers              // the other replicas' internal API (peer.go)
	cancel        context.CancelFunc
	done          chan struct{}
}

// AdminTokenPath is where the bootstrap admin token is written.
func AdminTokenPath(dataDir string) string { return filepath.Join(dataDir, "admin.token") }

// New opens the data directory and prepares every service; Serve starts
// answering. If a step fails, what the earlier steps opened (the database,
// the builder fleet and its network pool, the registry) is released before
// New returns.
func New(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg, err = checkConfig(cfg); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, done: make(chan struct{}), conns: newBuildConns()}
	// The metrics come first: the store reports to them from its opening.
	// They read the store and the fleet only once serving (Run, scrapes).
	s.metrics = metrics.New(metrics.Config{Logger: cfg.Logger,
		// Count a build's steps once the follower has stored them all.
		StepsDelay: follow.DefaultGrace + 2*time.Second,
		Steps: func(ctx context.Context, buildID string) ([]build.Step, error) {
			return s.store.ListSteps(ctx, buildID)
		},
		Builders: func() []builder.Status { return s.fleet.Status() }})
	defer func() {
		if err != nil {
			s.release(ctx)
		}
	}()
	if err := s.openData(ctx); err != nil {
		return nil, err
	}
	projects, err := s.startServices(ctx)
	if err != nil {
		return nil, err
	}
	mux, authn, logins, err := s.mountAPI(ctx, projects)
	if err != nil {
		return nil, err
	}
	guard := newGuard(mux, authn, cfg) // authentication and body deadlines: guard.go
	guard.refused = s.metrics.APIRefused
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP2(true) // over TLS, by ALPN (listen.go)
	// No ReadTimeout or WriteTimeout: bodies are bounded by idleness
	// (guard.go), whole requests are not (conns.go says why).
	s.http = &http.Server{
		Handler:           guard,
		Protocols:         protocols,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		// A build's registry connections are closed when it ends (conns.go).
		ConnContext: s.conns.connContext,
		ConnState:   s.conns.connState,
		// No error answered to a client names the data directory
		// (depot.ToConnect, the interceptor).
		BaseContext: func(net.Listener) context.Context {
			return depot.WithServerPaths(context.Background(), cfg.DataDir)
		},
	}
	s.http.RegisterOnShutdown(logins.Close) // waiting logins would hold Shutdown up
	return s, nil
}

// checkConfig validates what can be checked before anything is opened and
// fills in defaults. The data directory is created (the owner's only, also
// one made before kiln ran).
func checkConfig(cfg Config) (Config, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var err error
	if cfg.PublicURL, err = checkPublicURL(cfg.PublicURL); err != nil {
		return cfg, err
	}
	if cfg.AdvertiseURL, err = checkPublicURL(cfg.AdvertiseURL); err != nil {
		return cfg, fmt.Errorf("--advertise-url: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return cfg, fmt.Errorf("data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return cfg, fmt.Errorf("data dir: %w", err)
	}
	if cfg.BuilderDriver == DriverKubernetes {
		return cfg, nil // buildkitd runs in the builder image
	}
	if _, err := os.Stat(cfg.BuildkitdPath); err != nil {
		return cfg, fmt.Errorf("buildkitd not found at %q (run ./hack/setup.sh or pass --buildkitd): %w", cfg.BuildkitdPath, err)
	}
	return cfg, nil
}

// openData opens the database (bootstrapping the organization and its
// admin token on first start) and the CA, and checks the TLS mode.
func (s *Server) openData(ctx context.Context) error {
	cfg := s.cfg
	opts := []store.Option{store.WithObserver(s.metrics.ObserveStore)}
	if cfg.ClusterKeyFile == "" {
		// One replica: it holds the database, so that a second server
		// started on it by mistake cannot fail this one's builds.
		opts = append(opts, store.Exclusive())
	}
	st, err := store.Open(ctx, cfg.Store, cfg.DataDir, opts...)
	if err != nil {
		return err
	}
	s.store = st
	if err := s.openCluster(); err != nil {
		return err
	}
	if c, err := st.Collation(ctx); err == nil && c != "C" && c != "POSIX" {
		cfg.Logger.Warn("the database does not sort text bytewise: listings (builds, tags, repositories, the audit log) come in another order than on SQLite; "+
			"create it with LC_COLLATE 'C' (docs/operating.md, Postgres)", "collation", c)
	}
	created, err := project.Bootstrap(ctx, st, AdminTokenPath(cfg.DataDir))
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if created {
		cfg.Logger.Info("bootstrapped organization; admin token written", "path", AdminTokenPath(cfg.DataDir))
	}
	var caOpts []pki.Option
	if s.cluster.Shared() {
		// Every replica signs with the same CAs: a client's certificate
		// from one is checked by a builder another started.
		caOpts = append(caOpts, pki.Shared(s.cluster.Secret))
	}
	if s.ca, err = pki.Open(filepath.Join(cfg.DataDir, "pki"), caOpts...); err != nil {
		return err
	}
	switch cfg.TLS {
	case TLSDefault, TLSAuto:
	case TLSFiles:
		if _, err := loadTLSFiles(cfg.TLSCert, cfg.TLSKey); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--tls %q: want auto (or --tls-cert and --tls-key): %w", cfg.TLS, errdefs.ErrInvalid)
	}
	return nil
}

// startServices creates the audit recorder, the builder fleet, the build
// service and the builder gateway, and returns the project service over
// them. Nothing runs yet but the fleet's idle reaper.
func (s *Server) startServices(ctx context.Context) (*project.Service, error) {
	cfg := s.cfg
	s.audit = audit.New(s.store, audit.Config{Retention: cfg.AuditRetention, Exclusive: s.cluster.Exclusive}, cfg.Logger)
	// The fleet calls back into the build service when a builder dies; the
	// service is created right after, before any builder can start.
	var builds *build.Service
	var fleet builders
	var err error
	switch cfg.BuilderDriver {
	case "", DriverLocal:
		local, err := builder.NewFleet(builder.Config{
			Root:          filepath.Join(cfg.DataDir, "builders"),
			BuildkitdPath: cfg.BuildkitdPath,
			CA:            s.ca,
			IdleTTL:       cfg.BuilderIdle,
			StallTimeout:  cfg.BuilderStall,
			MemoryLimit:   cfg.BuilderMemory,
			OnUsage:       func(u builder.Usage) { builds.RecordBuilderUsage(builderUsage(u)) },
			Logger:        cfg.Logger,
			// Only the operator's flags reach buildkitd.toml; builds cannot.
			InsecureRegistries: cfg.InsecureRegistries,
			OwnRegistry:        s.ownRegistry,
			Network:            cfg.BuilderNetwork,
			PassEnv:            cfg.BuilderEnv,
			GitPrivateHosts:    cfg.Source.GitPrivateHosts,
			OnExit: func(projectID, platform string, leases []string, err error) {
				builds.BuilderLost(projectID, platform, leases, err)
			},
		})
		if err != nil {
			return nil, err
		}
		fleet = local
	case DriverKubernetes:
		kf, err := s.newKubeFleet(ctx, &builds)
		if err != nil {
			return nil, err
		}
		fleet = kf
	default:
		return nil, fmt.Errorf("--builder-driver %q: want local or kubernetes: %w", cfg.BuilderDriver, errdefs.ErrInvalid)
	}
	s.fleet = fleet
	if s.follow, err = follow.New(follow.Config{Lookup: fleet.Lookup, Platform: fleet.PlatformOf, Logger: cfg.Logger,
		Store: func(ctx context.Context, buildID string, steps []build.Step, logs []build.LogLine) error {
			return builds.StoreSteps(ctx, buildID, steps, logs)
		},
		// Source builds record their own solve's status (internal/runner).
		Skip: func(ctx context.Context, buildID string) bool {
			b, err := s.store.GetBuild(ctx, buildID)
			return err == nil && b.IsSource()
		}}); err != nil {
		return nil, err
	}
	var _ build.Acquirer = fleet // GetBuildKitConnection holds a pending answer (build.Config.HoldPending)
	var observers build.Observers
	if cfg.ClickHouse.URL != "" {
		tc := cfg.ClickHouse
		tc.Dir, tc.Source, tc.Logger = filepath.Join(cfg.DataDir, "telemetry"), s.store, cfg.Logger
		tc.Settle = follow.DefaultGrace + 5*time.Second // export a build once the follower stored all of it
		if s.telemetry, err = telemetry.New(tc); err != nil {
			return nil, err
		}
		observers = append(observers, s.telemetry)
		s.metrics.WatchExport(s.telemetry)
	}
	s.peers = newPeers(s)
	builds = build.NewService(s.store, fleet, s.ca, build.Config{HealthTimeout: cfg.HealthTimeout,
		Cluster: s.cluster, Owners: s.peers.owners(),
		ShareURL:     func(token string) string { return s.publicURL() + "/shared/" + token },
		BuildURL:     s.buildURL,
		Leased:       fleet.Leased,
		Active:       func(buildID string) bool { return s.gateway.Active(buildID) },
		RegistryHost: s.registryHost,
		GatewayAddr:  s.gatewayAddr,
		Revoke:       func(buildID string) { s.gateway.Revoke(buildID); s.conns.ended(buildID); s.follow.Ended(buildID) },
		Followed:     s.follow.Following,
		Observer:     append(build.Observers{s.metrics}, observers...),
		OnAcquire:    s.metrics.OnAcquire,
		Audit:        s.audit.AuthEvent}, cfg.Logger)
	s.builds = builds
	s.cluster.OnDead(builds.ReplicaDead)
	if s.gateway, err = gateway.New(gateway.Config{Builders: fleet, Certs: s.ca, Authorize: builds.BuilderAccess,
		OnSolve: s.follow.Solve, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	return &project.Service{Store: s.store, Builders: s.peers.builders(), Audit: s.audit,
		Revoked: s.peers.revoked(revoker{builds, s.gateway}), Network: s.peers.network()}, nil
}

// mountAPI builds the authenticator and mounts every API on a new mux:
// Depot's and kiln's Connect services, the registry, source builds, the
// dashboard, the health checks and /debug/builders. It opens the registry
// and the source builds' storage.
func (s *Server) mountAPI(ctx context.Context, projects *project.Service) (*http.ServeMux, *auth.Authenticator, *login.Service, error) {
	cfg := s.cfg
	authn := &auth.Authenticator{Store: s.store}
	authn.Audit = s.audit.AuthEvent // trust-policy matches; the interceptor's denials (auditDenied)
	if err := s.setupOIDC(authn); err != nil {
		return nil, nil, nil, err
	}
	mux := http.NewServeMux()
	depot.Mount(mux, projects, s.builds, cfg.Logger, s.apiInterceptors(authn), connect.WithReadMaxBytes(16<<20))
	logins := s.mountLogin(mux, s.store, authn, projects)
	s.mountAudit(mux, authn)
	s.mountTrustPolicies(mux, authn, projects)
	s.mountTokens(mux, authn, projects)
	s.mountProjectNetwork(mux, authn, projects)
	var err error
	if s.registry, err = s.openRegistry(ctx, s.store, authn); err != nil {
		return nil, nil, nil, err
	}
	s.mountRegistry(mux, authn, s.registry)
	if err := s.openSource(ctx, mux, s.store, authn, s.builds, projects); err != nil {
		return nil, nil, nil, err
	}
	if err := s.mountWeb(mux, authn, projects, logins); err != nil { // the dashboard and /builds/{id}: web.go
		return nil, nil, nil, err
	}
	s.peers.mount(ctx, mux) // the other replicas' calls: peer.go
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /readyz", s.readiness()) // ready.go
	fleet := s.fleet
	mux.Handle("GET /debug/builders", s.requireOrg(authn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(fleet.Status())
	})))
	// The admin listener serves /metrics to anyone who reaches it; here,
	// where the API is, only to an organization token (admin.go says why).
	mux.Handle("GET /metrics", s.requireOrg(authn, s.metrics.Handler()))
	return mux, authn, logins, nil
}

// release closes what New opened before a step failed, newest first. The
// runner is last to be made and nothing can fail after it, so it is never
// open here.
func (s *Server) release(ctx context.Context) {
	if s.telemetry != nil {
		s.telemetry.Close()
	}
	if s.registry != nil {
		s.registry.Close()
	}
	if s.fleet != nil {
		// No builder has started yet: this stops the reaper and releases
		// the network pool.
		if err := s.fleet.Close(context.WithoutCancel(ctx)); err != nil {
			s.cfg.Logger.Error("stop builders", "err", err)
		}
	}
	if s.store != nil {
		s.store.Close()
	}
}

// requireOrg guards operator-only HTTP endpoints with an org token.
func (s *Server) requireOrg(authn *auth.Authenticator, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := authn.Authenticate(r.Context(), auth.Bearer(r.Header.Get("Authorization")))
		if err != nil {
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
		if !p.IsOrg() {
			http.Error(w, "needs an organization token", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiInterceptors are every Connect handler's interceptors: the metrics
// (outermost: they time authentication too and see the code the client
// gets), then authentication.
func (s *Server) apiInterceptors(authn *auth.Authenticator) connect.HandlerOption {
	return connect.WithInterceptors(s.metrics.API(), authInterceptor(authn, s.cfg.Logger))
}

// publicProcedures answer without a token (the device-login flow starts
// before the caller has one). Handlers of these must not expect a principal.
var publicProcedures = map[string]bool{
	"/depot.cli.v1beta1.LoginService/StartLogin":  true,
	"/depot.cli.v1beta1.LoginService/FinishLogin": true,
}

// authInterceptor authenticates every Connect call and puts the principal
// in the context. Handlers authorize against the resource they touch.
func authInterceptor(authn *auth.Authenticator, logger *slog.Logger) connect.Interceptor {
	authenticate := func(ctx context.Context, h http.Header, procedure string) (context.Context, error) {
		if publicProcedures[procedure] {
			return ctx, nil
		}
		if _, ok := auth.FromContext(ctx); ok {
			return ctx, nil // the guard authenticated the request before its body was read
		}
		p, err := authn.Authenticate(ctx, auth.Bearer(h.Get("Authorization")))
		if err != nil {
			// The interceptor audits (and so logs, throttled) the refusal.
			return ctx, depot.ToConnect(ctx, logger, err)
		}
		return auth.WithPrincipal(ctx, p), nil
	}
	denied := func(ctx context.Context, procedure, peer string, err error) {
		auditDenied(ctx, authn, procedure, peer, err)
	}
	return &interceptor{authenticate: authenticate, denied: denied, logger: logger}
}

type interceptor struct {
	logger       *slog.Logger // Redact's: errors that named a server path
	authenticate func(ctx context.Context, h http.Header, procedure string) (context.Context, error)
	// denied sees every call's error (the authentication's or the
	// handler's) and audits the refusals among them.
	denied func(ctx context.Context, procedure, peer string, err error)
}

func (i *interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := i.authenticate(ctx, req.Header(), req.Spec().Procedure)
		if err != nil {
			i.denied(ctx, req.Spec().Procedure, req.Peer().Addr, err)
			return nil, err
		}
		res, err := next(ctx, req)
		if err != nil {
			i.denied(ctx, req.Spec().Procedure, req.Peer().Addr, err)
			err = depot.Redact(ctx, i.logger, err) // a handler's own connect.Error too
		}
		return res, err
	}
}

func (i *interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.authenticate(ctx, conn.RequestHeader(), conn.Spec().Procedure)
		if err == nil {
			err = next(ctx, conn)
		}
		if err != nil {
			i.denied(ctx, conn.Spec().Procedure, conn.Peer().Addr, err)
			err = depot.Redact(ctx, i.logger, err)
		}
		return err
	}
}

// Listen binds the address (so callers learn the real port of ":0") and
// prepares the listener's TLS.
func (s *Server) Listen() (net.Addr, error) {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	var cert tls.Certificate
	if s.cfg.TLS == TLSFiles {
		cert, err = loadTLSFiles(s.cfg.TLSCert, s.cfg.TLSKey)
	} else {
		cert, err = controlPlaneCert(s.ca, l.Addr(), s.cfg.PublicURL, s.cfg.AdvertiseURL)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	if err := s.listenAdmin(); err != nil {
		l.Close()
		return nil, err
	}
	s.listener = l
	s.mux = newConnMux(l, serverTLS(s.gateway, cert), s.gateway, s.cfg.TLS == TLSDefault)
	return l.Addr(), nil
}

// Serve answers requests until ctx is canceled, then shuts down gracefully:
// in-flight requests finish (bounded), builders stop, the database closes.
func (s *Server) Serve(ctx context.Context) error {
	if s.listener == nil {
		if _, err := s.Listen(); err != nil {
			return err
		}
	}
	bg, cancel := context.WithCancel(context.Background())
	defer cancel()
	// This replica is announced before it settles what its previous run
	// left: other replicas then know it lives.
	if err := s.startCluster(ctx); err != nil {
		return err
	}
	defer s.stopCluster() // on a failed start below too
	// Client builds a previous run left running are settled before the
	// health reaper or any client sees them.
	if err := s.builds.Reconcile(ctx); err != nil {
		// Not fatal: a build it could not settle ends at its health timeout.
		s.cfg.Logger.Error("reconcile client builds", "err", err)
	}
	go s.builds.Run(bg)
	go s.audit.Run(bg)
	go s.registry.Run(bg)
	go s.gateway.Run(bg)
	go s.metrics.Run(bg)
	if s.telemetry != nil {
		if err := s.telemetry.Start(); err != nil {
			return fmt.Errorf("clickhouse export: %w", err)
		}
	}
	// Source builds left queued or running by a previous server are
	// resumed or failed before anyone can ask about them.
	if err := s.runner.Start(ctx); err != nil {
		return fmt.Errorf("resume source builds: %w", err)
	}

	s.serveAdmin()
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.mux) }()
	// A Postgres store held exclusively says when another server took the
	// database over (after a connection drop): this one must stop at once,
	// or each would fail the other's running builds.
	var lost <-chan struct{}
	if l, ok := s.store.(interface{ Lost() <-chan struct{} }); ok {
		lost = l.Lost()
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	case <-lost:
		serveErr = fmt.Errorf("another kiln serve took this Postgres database over after a lost connection; stopping so that only one serves it: %w", errdefs.ErrUnavailable)
		s.cfg.Logger.Error("lost the exclusive hold of the Postgres database", "err", serveErr)
	}
	s.cfg.Logger.Info("shutting down")
	shutdownCtx, stop := context.WithTimeout(context.Background(), 15*time.Second)
	defer stop()
	// Source builds stop first: running ones record that they were
	// interrupted, and their watchers see it before the listener closes.
	s.runner.Close(shutdownCtx)
	_ = s.http.Shutdown(shutdownCtx)
	s.shutdownAdmin()
	cancel()
	s.follow.Close() // before the builders and the store it writes to
	s.registry.Close()
	if err := s.fleet.Close(shutdownCtx); err != nil {
		s.cfg.Logger.Error("stop builders", "err", err)
	}
	// The builders stopped with the server: builds that were using them
	// are over, and the record says why.
	if err := s.builds.Stopped(shutdownCtx); err != nil {
		s.cfg.Logger.Error("settle client builds", "err", err)
	}
	if s.telemetry != nil {
		s.telemetry.Close() // what is queued or spooled is exported after the next start
	}
	// Only now, its builds settled, does this replica leave the cluster:
	// until then the others must not take its builds for a dead one's.
	s.stopCluster()
	<-s.clusterDone // it removed this replica's record (a clean stop is not a death)
	if err := s.store.Close(); err != nil {
		s.cfg.Logger.Error("close database", "err", err)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// builderUsage is the fleet's usage report in the build domain's terms.
func builderUsage(u builder.Usage) build.BuilderUsage {
	return build.BuilderUsage{ProjectID: u.ProjectID, Platform: u.Platform, Builds: u.Leases, OOMKills: u.OOMKills,
		Sample: build.ResourceSample{At: u.At, Interval: u.Interval, CPUCores: u.CPUCores, Memory: u.Memory,
			MemoryPeak: u.MemoryPeak, MemoryLimit: u.MemoryLimit, IORead: u.IORead, IOWrite: u.IOWrite}}
}
