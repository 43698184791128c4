// Package kube runs kiln's builders on Kubernetes (kiln serve
// --builder-driver kubernetes): one buildkitd pod per (project, platform),
// in the objects an operator expects of it.
//
// Each builder is, in Config.Namespace:
//
//	StatefulSet kb-<arch>-<project>   one replica while in use, zero when idle
//	Pod         kb-<arch>-<project>-0 buildkitd, mTLS on port 1234
//	PVC         state-kb-<arch>-<project>-0  buildkitd's state: its cache survives the pod
//	Secret      kb-<arch>-<project>   server certificate, project CA, buildkitd.toml
//
// labelled app.kubernetes.io/name=kiln-builder, app.kubernetes.io/managed-by=kiln,
// kiln.dev/project and kiln.dev/platform. One NetworkPolicy (kiln-builders)
// keeps every builder pod from reaching another, the cluster's services
// and private ranges, and lets only kiln's gateway connect to them; a
// project's egress allow-list adds a NetworkPolicy of its own.
//
// The Fleet keeps the same books as the local driver's (internal/builder):
// leases of builds and gateway holds keep a builder in use; one idle for
// IdleTTL is scaled to zero (its volume stays); a pod that restarts or
// goes while in use fails the builds on it (OnExit) and is waited for
// again (Kubernetes restarts it); Reset deletes the project's objects, so
// its next build starts on an empty volume. A kiln restart adopts the
// builders it finds running instead of starting new ones.
//
// The gateway reaches a pod at its IP over mutual TLS: the pod's server
// certificate comes from the project's CA, issued for the builder's server
// name; the pod accepts only client certificates of the builder clients'
// CA (pki.BuilderClientCA), which only kiln holds, so a build's own
// certificate (from its project's CA) gets it nowhere but kiln's gateway.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/gateway"
	"github.com/kiln-dev/kiln/internal/pki"
	kplatform "github.com/kiln-dev/kiln/internal/platform"
)

// Config configures a Fleet. Zero values take the documented defaults.
type Config struct {
	Client    kubernetes.Interface
	Namespace string // "" → "kiln-builders"
	Image     string // the builder image (hack/kube/builder.Dockerfile); required
	// PullPolicy of the builder image; "" → IfNotPresent.
	PullPolicy corev1.PullPolicy
	// StorageClass of the builders' volumes; "" → the cluster's default.
	StorageClass string
	VolumeSize   resource.Quantity // each builder's volume; zero → 20Gi
	CA           *pki.Authority
	IdleTTL      time.Duration // scale a builder with no use to zero after this long; 0 → 10m
	// StartTimeout bounds a builder's start, pod scheduled, image pulled
	// and buildkitd answering; 0 → 5m.
	StartTimeout time.Duration
	// DefaultSize is a builder's size for a project with no hardware
	// size; zero → 2 cores x 4 GiB.
	DefaultSize Size
	// GatewayFrom are the addresses kiln's gateway connects to pods from;
	// none: kiln's own pods in Namespace (labelled
	// app.kubernetes.io/name=kiln).
	GatewayFrom []netip.Prefix
	// DenyEgress are destinations builder pods may not reach (nil →
	// DefaultDenyEgress); AllowEgress are exceptions for every builder
	// (kiln's registry, a package mirror).
	DenyEgress, AllowEgress []netip.Prefix
	// InsecureRegistries and OwnRegistry go into buildkitd.toml as for
	// local builders; OwnRegistry's CA files are read here and shipped in
	// the builder's Secret.
	InsecureRegistries []string
	OwnRegistry        func() builder.OwnRegistry
	// OnExit is told of the builds (leases) on a builder whose pod
	// restarted or went while they used it, with why (builder.Config.OnExit).
	OnExit func(projectID, platform string, leases []string, err error)
	// Adopt says whether a builder found running at start is this kiln's
	// to manage (with replicas: placed on this one); nil adopts all.
	Adopt  func(projectID, platform string) bool
	Logger *slog.Logger
	// Poll is how often pods are listed to see restarts; 0 → 1s.
	Poll time.Duration
}

const (
	defaultNamespace    = "kiln-builders"
	defaultIdleTTL      = 10 * time.Minute
	defaultStartTimeout = 5 * time.Minute
	startRetryBackoff   = 5 * time.Second
	// certTTL is how long a pod's server certificate is good for: it is
	// issued afresh at every start, and a builder idle that long is long
	// stopped.
	certTTL = 30 * 24 * time.Hour
	// clientTTL is kiln's client certificate to a pod; renewed at half.
	clientTTL = 24 * time.Hour
)

// Fleet runs builders as pods. All methods are safe for concurrent use.
// mu guards every builder's mutable fields and the maps; nothing slow
// (API calls, probes) happens under it.
type Fleet struct {
	cfg Config
	k   kubernetes.Interface
	log *slog.Logger

	mu        sync.Mutex
	builders  map[key]*kbuilder
	names     map[string]*kbuilder
	resetting map[string]int
	egress    map[string][]netip.Prefix // project → allow-list applied
	closed    bool

	quit chan struct{}
	wg   sync.WaitGroup
}

type key struct{ project, platform string }

// kbuilder is one (project, platform).
type kbuilder struct {
	projectID, platform, arch, object, serverName string
	// ops serializes the changes kiln makes to the builder's objects (a
	// start's, an idle stop's, a reset's).
	ops sync.Mutex

	// guarded by Fleet.mu
	spec     builder.Spec
	caPEM    string
	state    builder.State
	gen      int    // bumped at every start and stop; a start's result counts only for its gen
	podIP    string // while ready
	podUID   string // the pod it is ready on
	restarts int32  // its container's restart count when it became ready
	readyAt  time.Time
	client   engine.Connection
	clientAt time.Time
	use      builder.Use
	lastErr  error
	retryAt  time.Time
	restart  bool
	changed  chan struct{}
}

func (b *kbuilder) broadcastLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *kbuilder) endpoint() builder.Endpoint {
	return builder.Endpoint{ServerName: b.serverName, CACertPEM: b.caPEM}
}

// NewFleet checks cfg, makes the namespace's NetworkPolicy and adopts the
// builders it finds running.
func NewFleet(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Client == nil || cfg.CA == nil || cfg.Image == "" {
		return nil, fmt.Errorf("kube: Client, CA and Image are required: %w", errdefs.ErrInvalid)
	}
	if cfg.Namespace == "" {
		cfg.Namespace = defaultNamespace
	}
	if cfg.PullPolicy == "" {
		cfg.PullPolicy = corev1.PullIfNotPresent
	}
	if cfg.VolumeSize.IsZero() {
		cfg.VolumeSize = resource.MustParse("20Gi")
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = defaultIdleTTL
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if cfg.DefaultSize == (Size{}) {
		cfg.DefaultSize = Size{CPU: 2, Memory: 4}
	}
	if cfg.DenyEgress == nil {
		cfg.DenyEgress = DefaultDenyEgress
	}
	if cfg.OwnRegistry == nil {
		cfg.OwnRegistry = func() builder.OwnRegistry { return builder.OwnRegistry{} }
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if _, err := builder.PodConfig(builder.Spec{}, cfg.InsecureRegistries, builder.OwnRegistry{}); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, k: cfg.Client, log: log.With("driver", "kubernetes", "namespace", cfg.Namespace),
		builders: map[key]*kbuilder{}, names: map[string]*kbuilder{}, resetting: map[string]int{},
		egress: map[string][]netip.Prefix{}, quit: make(chan struct{})}
	if err := f.ensureNamespace(ctx); err != nil {
		return nil, err
	}
	if err := f.apply(ctx, f.builderPolicy()); err != nil {
		return nil, fmt.Errorf("kube: the builders' NetworkPolicy: %w", err)
	}
	if err := f.adopt(ctx); err != nil {
		return nil, err
	}
	f.wg.Add(2)
	go f.reap()
	go f.watch()
	return f, nil
}

// Ensure starts the builder for spec if it is not running (in the
// background) and reports whether it is ready now; as the local
// driver's (builder.Fleet.Ensure).
func (f *Fleet) Ensure(spec builder.Spec) (builder.Endpoint, bool, error) {
	ep, ready, _, err := f.ensure(spec)
	return ep, ready, err
}

// Acquire is Ensure that waits until the builder is ready, its start
// fails, or ctx is done.
//
// A ready builder's pod is looked at once more first: one deleted or
// restarted since the last watch (up to Config.Poll ago) is waited for
// again rather than handed to a build that would fail on it.
func (f *Fleet) Acquire(ctx context.Context, spec builder.Spec) (builder.Endpoint, error) {
	for {
		ep, ready, changed, err := f.ensure(spec)
		if err != nil {
			return ep, err
		}
		if ready && f.stillThere(ctx, ep.ServerName) {
			return ep, nil
		}
		if ready {
			continue // marked lost: waiting for its pod again
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return builder.Endpoint{}, fmt.Errorf("builder %s/%s not ready: %w: %w", spec.ProjectID, spec.Platform, errdefs.ErrUnavailable, context.Cause(ctx))
		}
	}
}

func (f *Fleet) ensure(spec builder.Spec) (builder.Endpoint, bool, <-chan struct{}, error) {
	p, err := kplatform.ParseBuilder(spec.Platform)
	if err != nil || spec.Platform == "" {
		return builder.Endpoint{}, false, nil, fmt.Errorf("builder: platform %q: %w", spec.Platform, errdefs.ErrInvalid)
	}
	spec.Platform = p.String()
	if spec.KeepBytes < 0 || spec.KeepDuration < 0 {
		return builder.Endpoint{}, false, nil, fmt.Errorf("builder: negative GC setting: %w", errdefs.ErrInvalid)
	}
	if spec.KeepBytes == 0 {
		spec.KeepBytes = builder.DefaultKeepBytes
	}
	if spec.KeepDuration == 0 {
		spec.KeepDuration = builder.DefaultKeepDuration
	}
	caPEM, err := f.cfg.CA.ProjectCA(spec.ProjectID)
	if err != nil {
		return builder.Endpoint{}, false, nil, fmt.Errorf("builder: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return builder.Endpoint{}, false, nil, fmt.Errorf("builder: fleet is closed: %w", errdefs.ErrUnavailable)
	}
	b := f.builderLocked(spec.ProjectID, spec.Platform, p.Arch)
	b.spec, b.caPEM = spec, string(caPEM)
	if have, ok := f.egress[spec.ProjectID]; (ok || len(spec.EgressAllow) > 0) && !slices.Equal(have, spec.EgressAllow) {
		// Recorded now so that the calls until it is applied do not
		// apply it again; forgotten if it fails, to be tried again.
		f.egress[spec.ProjectID] = slices.Clone(spec.EgressAllow)
		go f.setEgressLogged(spec.ProjectID, spec.EgressAllow)
	}
	b.use.Touch(time.Now())
	switch {
	case b.state == builder.StateReady:
		return b.endpoint(), true, b.changed, nil
	case b.state == builder.StateStarting:
		return b.endpoint(), false, b.changed, nil
	case f.resetting[b.projectID] > 0:
		b.restart = true
		return b.endpoint(), false, b.changed, nil
	case b.state == builder.StateCrashed && time.Now().Before(b.retryAt):
		return b.endpoint(), false, b.changed, b.lastErr
	}
	f.startLocked(b)
	return b.endpoint(), false, b.changed, nil
}

func (f *Fleet) builderLocked(projectID, platform, arch string) *kbuilder {
	k := key{projectID, platform}
	if b, ok := f.builders[k]; ok {
		return b
	}
	b := &kbuilder{
		projectID: projectID, platform: platform, arch: arch,
		object:     objectName(projectID, arch),
		serverName: projectID + "-" + arch + gateway.ServerNameSuffix,
		state:      builder.StateStopped,
		changed:    make(chan struct{}),
	}
	f.builders[k] = b
	f.names[b.serverName] = b
	return b
}

// startLocked begins a start of b in the background.
func (f *Fleet) startLocked(b *kbuilder) { f.startLockedAs(b, false) }

// startLockedAs starts b; adopting, it only waits for the pod found
// running (its objects are left as they are).
func (f *Fleet) startLockedAs(b *kbuilder, adopting bool) {
	b.restart = false
	b.state = builder.StateStarting
	b.gen++
	gen, spec := b.gen, b.spec
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), f.cfg.StartTimeout)
		defer cancel()
		go func() {
			select {
			case <-f.quit:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := f.start(ctx, b, gen, spec, adopting)
		f.mu.Lock()
		defer f.mu.Unlock()
		if b.gen != gen {
			return // stopped or reset meanwhile
		}
		if err != nil {
			f.log.Warn("builder failed to start", "project", b.projectID, "platform", b.platform, "err", err)
			b.state = builder.StateCrashed
			b.lastErr = fmt.Errorf("the builder for project %s (%s) did not start: %w", b.projectID, b.platform, unavailable(err))
			b.retryAt = time.Now().Add(startRetryBackoff)
		}
		b.broadcastLocked()
	}()
}

// unavailable keeps err's kind if it has one the client can act on, and
// makes it ErrUnavailable otherwise.
func unavailable(err error) error {
	if errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, errdefs.ErrInvalid) {
		return err
	}
	return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
}

// Lookup returns the project of the builder named serverName and how the
// gateway reaches its pod: by IP, with kiln's client certificate.
func (f *Fleet) Lookup(serverName string) (string, engine.Connection, bool) {
	f.mu.Lock()
	b, ok := f.names[serverName]
	if !ok {
		f.mu.Unlock()
		return "", engine.Connection{}, false
	}
	projectID, ip, conn, at := b.projectID, b.podIP, b.client, b.clientAt
	f.mu.Unlock()
	if ip == "" {
		// Not ready: the gateway's dial fails, as it does to a local
		// builder that is not running.
		return projectID, engine.Connection{}, true
	}
	if conn.CertPEM == "" || time.Since(at) > clientTTL/2 {
		c, err := f.clientConn(projectID, serverName)
		if err != nil {
			f.log.Warn("kiln's client certificate to a builder", "project", projectID, "err", err)
			return projectID, engine.Connection{}, true
		}
		f.mu.Lock()
		b.client, b.clientAt = c, time.Now()
		f.mu.Unlock()
		conn = c
	}
	conn.Endpoint = "tcp://" + netip.AddrPortFrom(netip.MustParseAddr(ip), port).String()
	return projectID, conn, true
}

// clientConn is kiln's credentials to a builder of projectID: a
// certificate of the builder clients' CA (pki.BuilderClientCA), which
// only kiln holds, and the project CA the pod's certificate chains to.
func (f *Fleet) clientConn(projectID, serverName string) (engine.Connection, error) {
	ca, err := f.cfg.CA.ProjectCA(projectID)
	if err != nil {
		return engine.Connection{}, err
	}
	cert, key, err := f.cfg.CA.IssueBuilderClient("kiln-builder-gateway", clientTTL)
	if err != nil {
		return engine.Connection{}, err
	}
	return engine.Connection{ServerName: serverName, CertPEM: string(cert), KeyPEM: string(key), CACertPEM: string(ca)}, nil
}

// PlatformOf returns the platform of the builder named serverName, or "".
func (f *Fleet) PlatformOf(serverName string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.names[serverName]; ok {
		return b.platform
	}
	return ""
}

// Lease marks the builder in use by leaseID (a build id).
func (f *Fleet) Lease(projectID, platform, leaseID string) {
	p, err := kplatform.ParseBuilder(platform)
	if err != nil || !pki.ValidProjectID(projectID) {
		f.log.Warn("lease for an invalid builder ignored", "project", projectID, "platform", platform, "lease", leaseID)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.builderLocked(projectID, p.String(), p.Arch)
	b.use.Lease(leaseID, time.Now())
}

// Leased reports whether leaseID holds the builder and it has not
// stopped.
func (f *Fleet) Leased(projectID, platform, leaseID string) bool {
	p, err := kplatform.ParseBuilder(platform)
	if err != nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.builders[key{projectID, p.String()}]
	return ok && b.state != builder.StateStopped && b.use.Holds(leaseID)
}

// Release ends a lease; idle time counts from the release of the last.
func (f *Fleet) Release(projectID, platform, leaseID string) {
	p, err := kplatform.ParseBuilder(platform)
	if err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.builders[key{projectID, p.String()}]
	if !ok {
		return
	}
	b.use.Release(leaseID, time.Now())
}

// Hold marks the builder named serverName in use by an open gateway
// connection.
func (f *Fleet) Hold(serverName string) (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.names[serverName]
	if !ok {
		return func() {}
	}
	return b.use.Hold(&f.mu)
}

// Reset deletes every object of the project's builders (the StatefulSets
// and their pods, volumes and Secrets, its egress policy): builds on them
// fail (OnExit is not called: the stop was asked for), and the next build
// starts on an empty volume. It is also how a deleted project's builders
// go. Builders asked for during the reset start when it is done.
func (f *Fleet) Reset(ctx context.Context, projectID string) error {
	if !pki.ValidProjectID(projectID) {
		return fmt.Errorf("builder: project id %q: %w", projectID, errdefs.ErrInvalid)
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return fmt.Errorf("builder: fleet is closed: %w", errdefs.ErrUnavailable)
	}
	f.resetting[projectID]++
	for _, b := range f.builders {
		if b.projectID == projectID {
			f.stopLocked(b)
		}
	}
	delete(f.egress, projectID)
	f.mu.Unlock()

	err := f.deleteProject(ctx, projectID)

	f.mu.Lock()
	f.resetting[projectID]--
	if f.resetting[projectID] == 0 {
		delete(f.resetting, projectID)
	}
	for _, b := range f.builders {
		if b.projectID != projectID {
			continue
		}
		b.state, b.lastErr, b.retryAt = builder.StateStopped, nil, time.Time{}
		if b.restart && !f.closed && f.resetting[projectID] == 0 {
			f.startLocked(b)
		}
		b.broadcastLocked()
	}
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("builder: reset %s: %w", projectID, err)
	}
	f.log.Info("project builders reset", "project", projectID)
	return nil
}

// stopLocked marks b stopped (its current start, if any, no longer
// counts) and forgets its pod.
func (f *Fleet) stopLocked(b *kbuilder) {
	b.gen++
	b.state = builder.StateStopped
	b.podIP, b.podUID = "", ""
	b.broadcastLocked()
}

// SetEgressAllow lets the project's builder pods reach allow besides what
// every builder reaches (a NetworkPolicy of the project's; none for an
// empty list). Applied at once, also to running pods.
func (f *Fleet) SetEgressAllow(projectID string, allow []netip.Prefix) error {
	if !pki.ValidProjectID(projectID) {
		return fmt.Errorf("builder: project id %q: %w", projectID, errdefs.ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := egressPolicyName(projectID)
	var err error
	if len(allow) == 0 {
		err = f.k.NetworkingV1().NetworkPolicies(f.cfg.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			err = nil
		}
	} else {
		err = f.apply(ctx, f.egressPolicy(projectID, allow))
	}
	if err != nil {
		return fmt.Errorf("builder: egress policy of project %s: %w", projectID, err)
	}
	f.mu.Lock()
	f.egress[projectID] = slices.Clone(allow)
	f.mu.Unlock()
	return nil
}

func (f *Fleet) setEgressLogged(projectID string, allow []netip.Prefix) {
	if err := f.SetEgressAllow(projectID, allow); err != nil {
		f.mu.Lock()
		delete(f.egress, projectID)
		f.mu.Unlock()
		f.log.Warn("apply a project's egress allow-list", "project", projectID, "err", err)
	}
}

// Projects lists the projects that have builder objects in the
// namespace, for collecting those of deleted projects.
func (f *Fleet) Projects(ctx context.Context) ([]string, error) {
	list, err := f.k.AppsV1().StatefulSets(f.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: managedSelector})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, s := range list.Items {
		id := s.Annotations[annoProject]
		if pki.ValidProjectID(id) && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	// Volumes left by a StatefulSet deleted without them.
	claims, err := f.k.CoreV1().PersistentVolumeClaims(f.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: managedSelector})
	if err != nil {
		return nil, err
	}
	for _, c := range claims.Items {
		id := c.Annotations[annoProject]
		if pki.ValidProjectID(id) && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Status lists the builders this kiln manages, by project then platform.
func (f *Fleet) Status() []builder.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]builder.Status, 0, len(f.builders))
	for _, b := range f.builders {
		s := builder.Status{ProjectID: b.projectID, Platform: b.platform, State: b.state, Conns: b.use.Conns(), Leases: b.use.LeaseIDs(),
			StateDir: "pvc/" + f.cfg.Namespace + "/" + claimName(b.object), LogPath: "pod/" + f.cfg.Namespace + "/" + podName(b.object)}
		if b.podIP != "" {
			s.Socket = "tcp://" + netip.AddrPortFrom(netip.MustParseAddr(b.podIP), port).String()
		}
		if b.lastErr != nil {
			s.Err = b.lastErr.Error()
		}
		out = append(out, s)
	}
	builder.SortStatus(out)
	return out
}

// Close stops the fleet's loops. Builder pods keep running: the next kiln
// adopts them, or scales them to zero once idle.
func (f *Fleet) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.mu.Unlock()
	close(f.quit)
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("builder: close: %w", context.Cause(ctx))
	}
}
