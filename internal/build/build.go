// Package build is the domain of builds: the Build record and its state
// machine (transitions.go), handing out builder connections with per-build
// client certificates, health tracking with the timeout that cancels
// abandoned builds, and the steps clients report. It reads and writes
// through the small Store interface in records.go (internal/store
// implements it) and knows nothing of Connect, HTTP or SQL.
package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/errdefs"
	kplatform "github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/project"
)

// Fleet is what builds need of the builder fleet.
type Fleet interface {
	Ensure(want spec.Spec) (spec.Endpoint, bool, error)
	Lease(projectID, platform, leaseID string)
	Release(projectID, platform, leaseID string)
}

// Acquirer is a fleet that can wait for a starting builder: Acquire
// returns once the builder is ready, its start fails, or ctx is done.
// builder.Fleet implements it; with a fleet that does not, a client polls
// as WaitMs says.
type Acquirer interface {
	Acquire(ctx context.Context, want spec.Spec) (spec.Endpoint, error)
}

// Observer is told of every build's life, for what watches builds from
// outside (Prometheus metrics, the ClickHouse export). Its methods are
// called on the request's path: they must not block or fail a build, so
// an observer only counts or queues. A build may be reported as ended more
// than once (a late client success overturns a failure the restart only
// presumed): observers key what they keep by build id.
type Observer interface {
	// BuildCreated: a client build was created (running) or a source
	// build queued.
	BuildCreated(b Build)
	// BuildStarted: a queued source build started running.
	BuildStarted(b Build)
	// BuildEnded: b reached a terminal status; b is its final record.
	BuildEnded(b Build)
}

// Observers fans every event out to each of its observers in order.
type Observers []Observer

func (o Observers) BuildCreated(b Build) {
	for _, x := range o {
		x.BuildCreated(b)
	}
}

func (o Observers) BuildStarted(b Build) {
	for _, x := range o {
		x.BuildStarted(b)
	}
}

func (o Observers) BuildEnded(b Build) {
	for _, x := range o {
		x.BuildEnded(b)
	}
}

// Certs issues per-build client certificates for a project's builders.
type Certs interface {
	IssueClient(projectID, commonName string, ttl time.Duration) (certPEM, keyPEM []byte, err error)
}

// Config tunes the service; zero values take the defaults noted.
type Config struct {
	HealthTimeout time.Duration // no health report for this long cancels a build; 0 → 5m (Depot's)
	ClientCertTTL time.Duration // lifetime of per-build client certs; 0 → 4h
	TokenTTL      time.Duration // lifetime of build tokens; 0 → 24h
	// BuildURL is a build's URL, answered as build_url (the server's
	// /builds/<id>); nil → "".
	BuildURL func(buildID string) string
	// ShareURL is the public URL of a build share token (ShareBuild);
	// nil → the server-relative "/shared/<token>".
	ShareURL func(token string) string
	// WaitMs is what GetBuildKitConnection answers while a builder starts.
	WaitMs int32
	// HoldPending is how long GetBuildKitConnection waits for a starting
	// builder before it answers pending, so that a client sees the builder
	// the moment it is ready instead of at its next poll; 0 → 2s, < 0 →
	// never wait.
	HoldPending time.Duration
	// RegistryHost is the host[:port] of kiln's registry as clients and
	// builders reach it, where --save pushes (see saved.go); nil or "" → the
	// server has no registry and refuses --save.
	RegistryHost func() string
	// Audit, if set, records refusals the caller hears as NotFound (a
	// build of another project of its organization), which the Connect
	// edge cannot tell from real misses; audit.Recorder.AuthEvent is one.
	Audit func(ctx context.Context, event string, attrs ...any)
	// GatewayAddr is the builder gateway's address as clients reach it,
	// "tcp://host:port" (kiln serve's own listener): every builder
	// connection goes there.
	GatewayAddr func() string
	// Observer is told of builds' lives (see Observer); nil → nobody.
	Observer Observer
	// OnAcquire is told how long each GetBuildKitConnection waited for
	// the project's builder (the fleet's Ensure, and HoldPending's wait
	// for a starting one) and how it ended: ready, still pending (the
	// client asks again), or err. It must not block. nil → nobody.
	OnAcquire func(wait time.Duration, ready bool, err error)
	// Revoke cuts a build's builder connections (the gateway's Revoke); it
	// is called whenever a build ends. nil: nothing to cut.
	Revoke func(buildID string)
	// Active reports whether a build's client is talking to its builder
	// right now (the gateway's Active: a connection is open, a solve may
	// be in progress). ReapAbandoned never cancels an active build, and
	// counts its silence from the last time it saw it active. nil: never.
	Active func(buildID string) bool
	// Leased reports whether the fleet still holds build buildID's lease
	// on project projectID's builder for platform: at start (Reconcile), a
	// running build whose lease did not survive the restart is failed.
	// nil: no lease survives a restart, as with builders that are kiln
	// serve's children (they die with it).
	Leased func(projectID, platform, buildID string) bool
	// Followed reports whether a build's solves are followed on its
	// builder (follow.Follower.Following): its BuildKit steps and logs
	// come from there, and ReportSteps keeps only what the client alone
	// knows (followed.go). nil: no build is followed.
	Followed func(buildID string) bool
	// Cluster is the replicas sharing the store (replicas.go); nil: this
	// is the only one.
	Cluster Cluster
	// Owners reaches the other replicas, which run their own builders
	// (replicas.go); nil: every builder is this replica's.
	Owners Owners
}

// Service implements build operations.
type Service struct {
	store  Store
	fleet  Fleet
	certs  Certs
	cfg    Config
	logger *slog.Logger
	// res queues builder usage for the store (resources.go).
	res *resourceRecorder

	// mu guards the fields below it.
	mu sync.Mutex
	// leases: build id → platforms it holds a builder lease on. The store
	// keeps the same set (Build.Platforms) so a restart can tell.
	leases map[string][]string
	// observedFrom is when the server last started watching builds' health
	// without a gap: its start, or its resume after the reaper noticed it
	// had not run for far longer than its interval (the process was
	// stopped, the machine suspended). Silence before it does not count
	// (reap.go).
	observedFrom time.Time
	// activeAt: build id → the last time the reaper saw the build active
	// (Config.Active); its silence counts from then. Dropped when the
	// build ends.
	activeAt map[string]time.Time
	// presumed: builds this server failed at start because it restarted
	// under them (Reconcile). Their client may still report success, which
	// then replaces the failure (Finish). Dropped once the client reports.
	presumed map[string]bool
}

// NewService wires the build domain.
func NewService(st Store, fleet Fleet, certs Certs, cfg Config, logger *slog.Logger) *Service {
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = 5 * time.Minute
	}
	if cfg.ClientCertTTL <= 0 {
		cfg.ClientCertTTL = 4 * time.Hour
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = 24 * time.Hour
	}
	if cfg.WaitMs <= 0 {
		cfg.WaitMs = 250
	}
	if cfg.HoldPending == 0 {
		cfg.HoldPending = 2 * time.Second
	}
	if cfg.BuildURL == nil {
		cfg.BuildURL = func(string) string { return "" }
	}
	if cfg.GatewayAddr == nil {
		cfg.GatewayAddr = func() string { return "" }
	}
	if cfg.Revoke == nil {
		cfg.Revoke = func(string) {}
	}
	if cfg.Observer == nil {
		cfg.Observer = Observers(nil)
	}
	if cfg.OnAcquire == nil {
		cfg.OnAcquire = func(time.Duration, bool, error) {}
	}
	if cfg.Active == nil {
		cfg.Active = func(string) bool { return false }
	}
	if cfg.Leased == nil {
		cfg.Leased = func(string, string, string) bool { return false }
	}
	return &Service{store: st, fleet: fleet, certs: certs, cfg: cfg, logger: logger, leases: map[string][]string{}, res: newResourceRecorder(),
		observedFrom: time.Now(), activeAt: map[string]time.Time{}, presumed: map[string]bool{}}
}

// URL is the build's page, if the server has one.
func (s *Service) URL(id string) string { return s.cfg.BuildURL(id) }

// Create starts a build in a project and returns it with its build token
// (shown once; it reaches only this build). options are the client's
// options as the record keeps them (depotext.Options), or nil.
func (s *Service) Create(ctx context.Context, p auth.Principal, projectID string, command int32, options json.Marshaler) (Build, string, error) {
	if projectID == "" && p.Kind == auth.TokenProject {
		projectID = p.ProjectID
	}
	if projectID == "" {
		return Build{}, "", fmt.Errorf("no project: pass --project, set KILN_PROJECT_ID, or add kiln.json: %w", errdefs.ErrInvalid)
	}
	if p.Kind == auth.TokenBuild {
		// Before the lookup, so the answer is the same for any project id.
		return Build{}, "", fmt.Errorf("build tokens cannot create builds: %w", errdefs.ErrPermission)
	}
	if p.Kind == auth.TokenProject && projectID != p.ProjectID {
		// Before the lookup too: the same answer whether the other project
		// is in the token's organization, in another, or nowhere. Permission
		// denied (not not-found) so that clients show the message as it is
		// (the depot CLI turns a not-found into "missing project ID"); the
		// Connect edge records the refusal in the audit log.
		return Build{}, "", fmt.Errorf("this token belongs to project %s; it cannot build in project %s: %w",
			p.ProjectID, shownID(projectID), errdefs.ErrPermission)
	}
	proj, err := s.store.GetProject(ctx, projectID)
	if err != nil {
		return Build{}, "", err
	}
	if !p.CanBuild(proj) {
		return Build{}, "", fmt.Errorf("project %q: %w", projectID, errdefs.ErrNotFound)
	}
	policies, err := s.admittedBy(ctx, p, proj.ID)
	if err != nil {
		return Build{}, "", err
	}
	opts, _ := json.Marshal(options)
	now := time.Now().UTC()
	b := Build{ID: project.NewID(), ProjectID: proj.ID, OrgID: proj.OrgID, Status: Running,
		Command: command, Options: string(opts), CreatedAt: now, StartedAt: now, LastHealthAt: now,
		PolicyIDs: policies, Until: p.Until(time.Time{})}
	if p.Kind == auth.TokenOrg || p.Kind == auth.TokenProject {
		b.CreatedBy = p.TokenID // deleting that token ends the build (EndCreatedBy)
	}
	if err := s.store.CreateBuild(ctx, b); err != nil {
		return Build{}, "", err
	}
	secret, hash := auth.NewSecret(auth.TokenBuild)
	t := auth.Token{ID: "tok_" + project.NewID(), Kind: auth.TokenBuild, OrgID: proj.OrgID, ProjectID: proj.ID,
		BuildID: b.ID, SecretHash: hash, CreatedAt: now, ExpiresAt: p.Until(now.Add(s.cfg.TokenTTL)), PolicyIDs: policies}
	if err := s.store.CreateToken(ctx, t); err != nil {
		if errors.Is(err, errdefs.ErrPermission) { // the policy went between the two inserts
			s.end(ctx, b.ID, Result{Status: Canceled, Error: "canceled: the trust policy that admitted its CI job was removed"})
		}
		return Build{}, "", err
	}
	s.logger.InfoContext(ctx, "build created", "build_id", b.ID, "project_id", proj.ID)
	s.cfg.Observer.BuildCreated(b)
	return b, secret, nil
}

// shownID is a client-given id as an answer may quote it: as it is when it
// looks like an id, quoted and clipped otherwise.
func shownID(id string) string {
	plain := len(id) <= 64 && !strings.ContainsFunc(id, func(r rune) bool {
		return r <= ' ' || r == '"' || r == '\\' || r >= 0x7f
	})
	if plain {
		return id
	}
	return strconv.Quote(clip(id, 64))
}

// Get returns a build the principal may see.
func (s *Service) Get(ctx context.Context, p auth.Principal, id string) (Build, error) {
	if id == "" {
		return Build{}, fmt.Errorf("build id is required: %w", errdefs.ErrInvalid)
	}
	b, err := s.store.GetBuild(ctx, id)
	if err != nil {
		return Build{}, err
	}
	if !p.CanUseBuild(b) {
		// The answer for a build that does not exist, for every kind of
		// token (a build token's too): it must not learn which ids exist.
		// Audited only within the caller's organization: another's
		// administrators would learn the same from their audit log.
		if s.cfg.Audit != nil && b.OrgID == p.OrgID {
			s.cfg.Audit(ctx, audit.KindDenied, "code", "NotFound", "reason", "a build of another project (answered as not found)",
				"build_id", id, "org_id", p.OrgID, "actor", p.TokenID, "token_kind", p.Kind)
		}
		return Build{}, fmt.Errorf("build %q: %w", id, errdefs.ErrNotFound)
	}
	return b, nil
}

// clientBuild is Get for the calls only a build's client makes (builder
// connections, health, status reports, finishing): kiln runs source builds
// itself, and their clients may only watch or cancel them.
func (s *Service) clientBuild(ctx context.Context, p auth.Principal, id string) (Build, error) {
	b, err := s.Get(ctx, p, id)
	if err != nil {
		return Build{}, err
	}
	if b.IsSource() {
		return Build{}, fmt.Errorf("build %q is run by kiln from an uploaded context; watch it with WatchBuild or stop it with CancelBuild: %w", id, errdefs.ErrFailedPrecondition)
	}
	if err := drive(p, b); err != nil {
		return Build{}, err
	}
	return b, nil
}

// drive refuses a principal that may see b but not act as its client: a
// CI job's default role drives its own builds with their build tokens.
func drive(p auth.Principal, b Build) error {
	if p.CanDriveBuild(b) {
		return nil
	}
	return fmt.Errorf("build %q: a CI job acts on the builds it creates with the build token CreateBuild returned; "+
		"acting on other builds needs a trust policy with role %q: %w", b.ID, auth.RoleProject, errdefs.ErrPermission)
}

// List lists a project's builds, newest first.
func (s *Service) List(ctx context.Context, p auth.Principal, projectID string, before time.Time, limit int) ([]Build, error) {
	if p.Kind == auth.TokenBuild {
		// Before the lookup, so the answer is the same for any project id.
		return nil, fmt.Errorf("build tokens cannot list builds: %w", errdefs.ErrPermission)
	}
	proj, err := s.store.GetProject(ctx, projectID)
	if err != nil {
		return nil, err
	}
	if !p.CanSeeProject(proj) {
		return nil, fmt.Errorf("project %q: %w", projectID, errdefs.ErrNotFound)
	}
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	return s.store.ListBuilds(ctx, projectID, before, limit)
}

// Connection is the answer to GetBuildKitConnection: the gateway's
// address, the name of the builder behind it, and the build's client
// certificate.
type Connection struct {
	Ready    bool
	WaitMs   int32
	Addr     string // the gateway, "tcp://host:port"
	Endpoint spec.Endpoint
	CertPEM  string
	KeyPEM   string
}

// Connect answers whether the build's builder for platform is ready; when
// it is, it leases the builder to the build and issues a client
// certificate good only for that project's builders.
func (s *Service) Connect(ctx context.Context, p auth.Principal, buildID, platform string) (Connection, error) {
	b, err := s.clientBuild(ctx, p, buildID)
	if err != nil {
		return Connection{}, err
	}
	if b.Terminal() {
		return Connection{}, errEnded(b)
	}
	builder, err := kplatform.ParseBuilder(platform)
	if err != nil {
		return Connection{}, err
	}
	return s.connect(ctx, b, builder.String())
}

// connect leases the project's builder for platform to build b and, once
// the builder is ready, issues a client certificate for it: here, or on
// the replica that runs the builder (replicas.go).
func (s *Service) connect(ctx context.Context, b Build, platform string) (Connection, error) {
	owner, err := s.placeBuilder(ctx, b.ProjectID, platform)
	if err != nil {
		return Connection{}, err
	}
	if owner != s.self() {
		return s.cfg.Owners.Connect(ctx, owner, b.ID, platform)
	}
	return s.connectHere(ctx, b, platform)
}

// connectHere is connect on this replica's own fleet.
func (s *Service) connectHere(ctx context.Context, b Build, platform string) (Connection, error) {
	proj, err := s.store.GetProject(ctx, b.ProjectID)
	if err != nil {
		return Connection{}, err
	}
	if err := s.touch(ctx, b.ID, platform); err != nil {
		return Connection{}, err
	}
	s.lease(b.ProjectID, platform, b.ID)
	want := SpecFor(proj, platform)
	acquiring := time.Now()
	ep, ready, err := s.fleet.Ensure(want)
	if err != nil {
		s.cfg.OnAcquire(time.Since(acquiring), false, err)
		return Connection{}, err
	}
	if !ready {
		ep, ready, err = s.holdPending(ctx, want)
	}
	s.cfg.OnAcquire(time.Since(acquiring), ready, err)
	if err != nil || !ready {
		return Connection{WaitMs: s.cfg.WaitMs}, err
	}
	ttl := s.cfg.ClientCertTTL
	if !b.Until.IsZero() {
		left := time.Until(b.Until)
		if left <= 0 {
			return Connection{}, jobExpired(b)
		}
		ttl = min(ttl, left)
	}
	cert, key, err := s.certs.IssueClient(b.ProjectID, "build:"+b.ID, ttl)
	if err != nil {
		return Connection{}, fmt.Errorf("issue client certificate: %w", err)
	}
	return Connection{Ready: true, Addr: s.cfg.GatewayAddr(), Endpoint: ep, CertPEM: string(cert), KeyPEM: string(key)}, nil
}

// holdPending waits up to HoldPending for a starting builder (see
// Acquirer). It reports ready false, with no error, when the wait ran out
// or the caller went away: the client asks again as WaitMs says.
func (s *Service) holdPending(ctx context.Context, want spec.Spec) (spec.Endpoint, bool, error) {
	a, ok := s.fleet.(Acquirer)
	if !ok || s.cfg.HoldPending < 0 {
		return spec.Endpoint{}, false, nil
	}
	hold, cancel := context.WithTimeout(ctx, s.cfg.HoldPending)
	defer cancel()
	ep, err := a.Acquire(hold, want)
	switch {
	case err == nil:
		return ep, true, nil
	case hold.Err() != nil:
		return spec.Endpoint{}, false, nil
	}
	return spec.Endpoint{}, false, err
}

// BuilderAccess is the gateway's question for every connection (and again
// while it lasts): may build buildID use project projectID's builders now?
// Only while the build is in that project and has not ended, and the token
// that created it has not been deleted. A store failure is
// errdefs.ErrUnavailable, which refuses a new connection but does not cut
// a live one.
func (s *Service) BuilderAccess(ctx context.Context, projectID, buildID string) error {
	b, err := s.store.GetBuild(ctx, buildID)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("build %q: %w", buildID, errdefs.ErrNotFound)
		}
		return fmt.Errorf("look up build: %v: %w", err, errdefs.ErrUnavailable)
	}
	if b.ProjectID != projectID {
		return fmt.Errorf("build %q is not in project %q: %w", buildID, projectID, errdefs.ErrPermission)
	}
	if b.Terminal() {
		return errEnded(b)
	}
	if b.CreatedBy != "" {
		if _, err := s.store.GetToken(ctx, b.CreatedBy); errdefs.IsNotFound(err) {
			return fmt.Errorf("build %q: the token that created it was deleted: %w", buildID, errdefs.ErrPermission)
		}
	}
	return s.jobAccess(ctx, b)
}

// EndCreatedBy cancels the running client builds a deleted token created:
// their build tokens stop working and their builder connections are cut.
func (s *Service) EndCreatedBy(ctx context.Context, tokenID string) error {
	if tokenID == "" {
		return nil
	}
	running, err := s.store.ListBuildsByStatus(ctx, Running)
	if err != nil {
		return err
	}
	for _, b := range running {
		if b.CreatedBy != tokenID || b.IsSource() {
			continue
		}
		if _, err := s.end(ctx, b.ID, Result{Status: Canceled, Error: "canceled: the token that started this build was deleted"}); err != nil {
			return err
		}
	}
	return nil
}

// SpecFor turns a project's cache policy and egress allow-list into a
// builder spec.
func SpecFor(proj project.Project, platform string) spec.Spec {
	s := spec.Spec{ProjectID: proj.ID, Platform: platform, Hardware: proj.Hardware,
		KeepBytes:    int64(proj.KeepGB) << 30,
		KeepDuration: time.Duration(proj.KeepDays) * 24 * time.Hour}
	s.EgressAllow = EgressPrefixes(proj.EgressAllow)
	return s
}

// EgressPrefixes parses a project's egress allow-list (validated when it
// was set); an entry that no longer parses is skipped, and so stays
// blocked.
func EgressPrefixes(cidrs []string) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func (s *Service) lease(projectID, platform, buildID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.leases[buildID], platform) {
		return
	}
	s.leases[buildID] = append(s.leases[buildID], platform)
	s.fleet.Lease(projectID, platform, buildID)
}

// releaseAll drops every builder lease the build holds and cuts its
// builder connections. Only ended builds get here.
func (s *Service) releaseAll(b Build) {
	s.cfg.Revoke(b.ID)
	s.mu.Lock()
	platforms := s.leases[b.ID]
	delete(s.leases, b.ID)
	delete(s.activeAt, b.ID)
	s.mu.Unlock()
	for _, pl := range strings.Split(b.Platforms, ",") {
		if pl != "" && !slices.Contains(platforms, pl) {
			platforms = append(platforms, pl)
		}
	}
	for _, pl := range platforms {
		s.fleet.Release(b.ProjectID, pl, b.ID)
	}
}

// touch records activity for the health timeout, and with a platform,
// that the build leases this replica's builder for it: the platform joins
// Platforms and a client build's Replica becomes this replica (a source
// build's is the replica running it, which its runner records).
func (s *Service) touch(ctx context.Context, id, platform string) error {
	_, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
		if b.Terminal() {
			return errEnded(*b)
		}
		b.LastHealthAt = time.Now().UTC()
		if platform != "" && !slices.Contains(strings.Split(b.Platforms, ","), platform) {
			b.Platforms = strings.Trim(b.Platforms+","+platform, ",")
		}
		if platform != "" && !b.IsSource() {
			b.Replica = s.self()
		}
		return nil
	})
	return err
}

// Health records that the client is alive. The answer is when the build
// will be canceled if no further report arrives; a finished build answers
// its finish time so the client stops.
func (s *Service) Health(ctx context.Context, p auth.Principal, buildID string) (time.Time, error) {
	b, err := s.clientBuild(ctx, p, buildID)
	if err != nil {
		return time.Time{}, err
	}
	if b.Terminal() {
		return b.FinishedAt, nil
	}
	if err := s.touch(ctx, b.ID, ""); err != nil {
		if errdefs.IsNotFound(err) {
			return time.Time{}, err
		}
		return b.FinishedAt, nil
	}
	return time.Now().UTC().Add(s.cfg.HealthTimeout), nil
}

// Result is how a client says its build ended.
type Result struct {
	Status Status // Succeeded, Failed or Canceled
	Error  string
}

// Finish ends a build with its client's result and releases its builders.
// It is idempotent: the first end wins, and the same result reported again
// (a retry whose first answer was lost) is answered with success. A
// different result for a build that already ended changes nothing and is
// errdefs.ErrFailedPrecondition saying how the build was recorded, so the
// client can tell its user — with one exception: a failure this server
// presumed because it restarted under the build (Reconcile) is replaced by
// the client's success, since the client saw how its solve really ended.
func (s *Service) Finish(ctx context.Context, p auth.Principal, buildID string, r Result) error {
	if _, err := s.clientBuild(ctx, p, buildID); err != nil {
		return err
	}
	if len(r.Error) > 64<<10 {
		r.Error = r.Error[:64<<10]
	}
	s.mu.Lock()
	presumed := s.presumed[buildID]
	delete(s.presumed, buildID) // the client has spoken; its word is final
	s.mu.Unlock()
	overturned := false
	b, changed, err := s.endWith(ctx, buildID, func(b *Build, now time.Time) bool {
		if presumed && b.Overturn(r.Status, now) == nil {
			overturned = true
			return true
		}
		if b.Transition(r.Status, now) != nil {
			return false
		}
		b.Error = r.Error
		return true
	})
	switch {
	case err != nil:
		return err
	case overturned:
		s.logger.InfoContext(ctx, "the client reported success for a build presumed failed at restart; recorded its success",
			"build_id", buildID, "project_id", b.ProjectID)
	case !changed && b.Status != r.Status:
		reason := ""
		if b.Error != "" {
			reason = ": " + b.Error
		}
		return fmt.Errorf("build %q had already ended as %s%s: %w", buildID, b.Status, reason, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// end moves a build that has not ended to a terminal status and releases
// its leases. A build that already ended keeps its status: the first end
// wins.
func (s *Service) end(ctx context.Context, id string, r Result) (Build, error) {
	b, _, err := s.endWith(ctx, id, func(b *Build, now time.Time) bool {
		if b.Transition(r.Status, now) != nil {
			return false
		}
		b.Error = r.Error
		return true
	})
	return b, err
}

// endWith applies change to the stored build in one transaction; change
// reports whether it ended the build. Either way the build has ended
// after, so its leases are released and its connections cut (again, for a
// build that had ended: both are idempotent).
func (s *Service) endWith(ctx context.Context, id string, change func(b *Build, now time.Time) bool) (Build, bool, error) {
	changed := false
	b, err := s.store.UpdateBuild(ctx, id, func(b *Build) error {
		changed = change(b, time.Now().UTC())
		return nil
	})
	if err != nil {
		return b, false, err
	}
	s.releaseAll(b)
	if changed {
		s.logger.InfoContext(ctx, "build finished", "build_id", id, "project_id", b.ProjectID, "status", b.Status)
		s.cfg.Observer.BuildEnded(b)
	}
	return b, changed, nil
}

// Release gives back one platform's builder early (depot.buildkit.v1
// ReleaseEndpoint); the build itself stays open.
func (s *Service) Release(ctx context.Context, p auth.Principal, buildID, platform string) error {
	b, err := s.clientBuild(ctx, p, buildID)
	if err != nil {
		return err
	}
	builder, err := kplatform.ParseBuilder(platform)
	if err != nil {
		return err
	}
	platform = builder.String()
	owner, err := s.placeBuilder(ctx, b.ProjectID, platform)
	if err != nil {
		return err
	}
	if owner != s.self() {
		return s.cfg.Owners.Release(ctx, owner, b.ID, platform)
	}
	s.releaseHere(b, platform)
	return nil
}

// releaseHere gives back build b's lease of this replica's builder for
// platform.
func (s *Service) releaseHere(b Build, platform string) {
	s.mu.Lock()
	s.leases[b.ID] = slices.DeleteFunc(s.leases[b.ID], func(x string) bool { return x == platform })
	s.mu.Unlock()
	s.fleet.Release(b.ProjectID, platform, b.ID)
}

// ReportSteps stores steps a client reported; of a followed build, only
// what the builder cannot show (see clientOnly).
func (s *Service) ReportSteps(ctx context.Context, p auth.Principal, buildID string, steps []Step, logs []LogLine) error {
	b, err := s.clientBuild(ctx, p, buildID)
	if err != nil {
		return err
	}
	if len(steps) > 10000 || len(logs) > 100000 {
		return fmt.Errorf("too many steps or log lines in one report: %w", errdefs.ErrInvalid)
	}
	if s.followed(b) {
		var err error
		if steps, logs, err = s.clientOnly(ctx, buildID, steps, logs); err != nil {
			return err
		}
	}
	return s.StoreSteps(ctx, buildID, steps, logs)
}

// Steps lists a build's reported steps.
func (s *Service) Steps(ctx context.Context, p auth.Principal, buildID string) ([]Step, error) {
	if _, err := s.Get(ctx, p, buildID); err != nil {
		return nil, err
	}
	return s.store.ListSteps(ctx, buildID)
}

// Logs pages through one step's log lines.
func (s *Service) Logs(ctx context.Context, p auth.Principal, buildID, digest string, after, limit int) ([]LogLine, int, error) {
	if _, err := s.Get(ctx, p, buildID); err != nil {
		return nil, 0, err
	}
	return s.store.ListLogs(ctx, buildID, digest, after, limit)
}

// BuilderLost fails the builds that were using a builder that died. It is
// the fleet's OnExit callback.
func (s *Service) BuilderLost(projectID, platform string, leases []string, cause error) {
	ctx := context.Background()
	for _, id := range leases {
		// The fleet's cause is written for the build's user ("the builder
		// for project P (linux/amd64) crashed during the build (signal 9);
		// retry the build", "... stopped responding ...").
		msg := fmt.Sprintf("the builder for project %s (%s) was lost; retry the build", projectID, platform)
		if cause != nil {
			msg = cause.Error()
		}
		if _, err := s.end(ctx, id, Result{Status: Failed, Error: msg}); err != nil {
			s.logger.Error("fail build after builder loss", "build_id", id, "err", err)
		}
	}
}
