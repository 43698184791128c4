package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/project"
)

// The replicas' internal API: what one kiln serve replica asks of the
// others sharing its store (internal/cluster). A replica runs its own
// builders, so a client build connected through one replica is connected
// on the replica its project's builder is placed on (peerConnectPath,
// build.Config.Owners; a builder released early is released there too:
// peerReleasePath), and a project's cache reset, deletion or egress
// change is applied by every live replica to its own builders
// (peerProjectPath). Calls carry the cluster's bearer (cluster.PeerToken);
// without a cluster key a replica has no peers and refuses every call.
// The routes are on the public listener: an operator's load balancer may
// keep /internal/ to the replicas' own network. The client and the
// handlers are both here.
const (
	peerConnectPath = "/internal/replica/v1/connect"
	peerReleasePath = "/internal/replica/v1/release"
	peerProjectPath = "/internal/replica/v1/project"
	// peerBodyLimit bounds requests and answers (an answer carries two
	// certificates and a key: a few KiB).
	peerBodyLimit = 64 << 10
	// peerConnectTimeout bounds a connect asked of the owner, which may
	// hold the answer while the builder starts (build.Config.HoldPending).
	peerConnectTimeout = 30 * time.Second
	// peerProjectTimeout bounds a project operation on one replica: a
	// reset stops the project's builders there.
	peerProjectTimeout = 2 * time.Minute
)

// Project operations applied by every replica to its own builders.
const (
	peerOpReset  = "reset"  // empty the project's builder state
	peerOpDelete = "delete" // as reset, and cut the project's gateway connections
	peerOpEgress = "egress" // apply the project's egress allow-list
)

// peerConnectRequest is also a release's.
type peerConnectRequest struct {
	BuildID  string `json:"build_id"`
	Platform string `json:"platform"`
}

// peerConnection is a build.Connection on the wire; the builder's socket
// is the owner's own and is not sent.
type peerConnection struct {
	Ready      bool   `json:"ready"`
	WaitMs     int32  `json:"wait_ms,omitempty"`
	Addr       string `json:"addr,omitempty"`
	ServerName string `json:"server_name,omitempty"`
	CACertPEM  string `json:"ca_cert_pem,omitempty"`
	CertPEM    string `json:"cert_pem,omitempty"`
	KeyPEM     string `json:"key_pem,omitempty"`
}

type peerProjectRequest struct {
	Op        string   `json:"op"`
	ProjectID string   `json:"project_id"`
	CIDRs     []string `json:"cidrs,omitempty"`
}

// peerError is an answer's error: its errdefs kind and message.
type peerError struct {
	Kind  string `json:"kind"`
	Error string `json:"error"`
}

// peerKinds name the errdefs kinds on the wire, with their HTTP status.
var peerKinds = []struct {
	name   string
	err    error
	status int
}{
	{"not_found", errdefs.ErrNotFound, http.StatusNotFound},
	{"already_exists", errdefs.ErrAlreadyExists, http.StatusConflict},
	{"canceled", errdefs.ErrCanceled, 499}, // a client's cancel, as nginx names it
	{"invalid", errdefs.ErrInvalid, http.StatusBadRequest},
	{"permission", errdefs.ErrPermission, http.StatusForbidden},
	{"failed_precondition", errdefs.ErrFailedPrecondition, http.StatusPreconditionFailed},
	{"exhausted", errdefs.ErrExhausted, http.StatusTooManyRequests},
	{"expired", errdefs.ErrExpired, http.StatusGone},
	{"unauthenticated", errdefs.ErrUnauthenticated, http.StatusUnauthorized},
	{"unavailable", errdefs.ErrUnavailable, http.StatusServiceUnavailable},
}

// peers is this replica's side of the internal API.
type peers struct {
	s      *Server
	client *http.Client
	// fleet is this replica's builders; revokeProject cuts a project's
	// connections to them (the gateway's RevokeProject).
	fleet         peerFleet
	revokeProject func(projectID string)
}

// peerFleet is what project operations need of this replica's builders
// (*builder.Fleet).
type peerFleet interface {
	Reset(ctx context.Context, projectID string) error
	SetEgressAllow(projectID string, allow []netip.Prefix) error
}

// newPeers is s's side of the internal API, over its fleet (already made)
// and its gateway (made later).
func newPeers(s *Server) *peers {
	// Never redirected: the bearer goes to the advertised URL and nowhere
	// else, and a replica's answer is its own.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &peers{s: s, client: &http.Client{Transport: peerTransport(s.ca), CheckRedirect: noRedirect}, fleet: s.fleet,
		revokeProject: func(projectID string) { s.gateway.RevokeProject(projectID) }}
}

// peerTransport reaches the other replicas at their advertised URLs: over
// TLS, it trusts the system's roots and kiln's CA (which signs the
// control-plane certificate of a replica without --tls-cert).
func peerTransport(ca *pki.Authority) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	roots.AppendCertsFromPEM(ca.RootPEM())
	t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return t // each call's context bounds it
}

// enabled: this replica has a cluster key, so it may have peers.
func (p *peers) enabled() bool { return p.s.cluster.Shared() }

// owners is build.Config.Owners: nil for a replica without peers, whose
// builds all use its builders.
func (p *peers) owners() build.Owners {
	if !p.enabled() {
		return nil
	}
	return peerOwners{p}
}

// peerOwners asks the replicas running builders to act on them.
type peerOwners struct{ p *peers }

// Connect asks replica owner to connect the build to its builder.
func (o peerOwners) Connect(ctx context.Context, owner, buildID, platform string) (build.Connection, error) {
	p := o.p
	var c peerConnection
	if err := p.call(ctx, owner, peerConnectPath, peerConnectTimeout, peerConnectRequest{BuildID: buildID, Platform: platform}, &c); err != nil {
		return build.Connection{}, err
	}
	return build.Connection{Ready: c.Ready, WaitMs: c.WaitMs, Addr: c.Addr,
		Endpoint: spec.Endpoint{ServerName: c.ServerName, CACertPEM: c.CACertPEM}, CertPEM: c.CertPEM, KeyPEM: c.KeyPEM}, nil
}

// Release asks replica owner to release the build's lease of its builder.
func (o peerOwners) Release(ctx context.Context, owner, buildID, platform string) error {
	return o.p.call(ctx, owner, peerReleasePath, peerConnectTimeout, peerConnectRequest{BuildID: buildID, Platform: platform}, nil)
}

// broadcast applies a project operation on every other live replica, at
// once; it fails if any of them did not apply it.
func (p *peers) broadcast(ctx context.Context, op peerProjectRequest) error {
	if !p.enabled() {
		return nil
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, r := range p.s.cluster.Peers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.call(ctx, r.ID, peerProjectPath, peerProjectTimeout, op, nil); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s of project %s on the other kiln replicas: %w", op.Op, op.ProjectID, err)
	}
	return nil
}

// call posts in to replica id's path and decodes its answer into out (nil:
// no answer body). An error answered by the replica keeps its kind; a
// replica that cannot be reached is errdefs.ErrUnavailable.
func (p *peers) call(ctx context.Context, id, path string, timeout time.Duration, in, out any) error {
	r, ok := p.s.cluster.Member(id)
	if !ok || r.APIURL == "" {
		return fmt.Errorf("kiln replica %s is not (yet) known to this one as alive; retry: %w", id, errdefs.ErrUnavailable)
	}
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(r.APIURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("kiln replica %s advertises a URL this one cannot use (%v): %w", id, err, errdefs.ErrUnavailable)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.s.cluster.PeerToken())
	res, err := p.client.Do(req)
	if err != nil {
		// The replica's address is the operator's business, not the
		// client's: it goes to the log.
		p.s.cfg.Logger.WarnContext(ctx, "a kiln replica is unreachable", "replica", id, "url", r.APIURL, "err", err)
		return fmt.Errorf("kiln replica %s is unreachable; retry: %w", id, errdefs.ErrUnavailable)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, peerBodyLimit+1))
	switch {
	case err != nil:
		return fmt.Errorf("kiln replica %s: read its answer: %v; retry: %w", id, err, errdefs.ErrUnavailable)
	case len(data) > peerBodyLimit:
		return fmt.Errorf("kiln replica %s answered more than %d bytes: %w", id, peerBodyLimit, errdefs.ErrUnavailable)
	case res.StatusCode/100 != 2:
		return peerAnswerError(id, res.StatusCode, data)
	case out == nil:
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("kiln replica %s: its answer: %v: %w", id, err, errdefs.ErrUnavailable)
	}
	return nil
}

// peerAnswerError is a replica's error answer as an error of its kind. A
// refused bearer is the operator's to fix, not the client's: it is
// Unavailable, naming the cluster key.
func peerAnswerError(id string, status int, data []byte) error {
	var e peerError
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(data))
		if len(e.Error) > 200 {
			e.Error = e.Error[:200]
		}
	}
	if status == http.StatusUnauthorized {
		return fmt.Errorf("kiln replica %s refused this replica's credentials (is every replica given the same --cluster-key-file?): %w", id, errdefs.ErrUnavailable)
	}
	for _, k := range peerKinds {
		if k.name == e.Kind {
			// The domain's own message, as the owner would answer it.
			return errdefs.Wrapf(k.err, nil, "%s", e.Error)
		}
	}
	if e.Kind == "" && status >= 502 && status <= 504 {
		// Not kiln's answer: a proxy between the replicas.
		return fmt.Errorf("kiln replica %s answered %d (a proxy's answer, not kiln's); retry: %w", id, status, errdefs.ErrUnavailable)
	}
	// Of no kind: the edge logs it and answers Internal.
	return fmt.Errorf("kiln replica %s answered %d: %s", id, status, e.Error)
}

// mount serves the internal API on mux, and drops the builder state of
// projects deleted while this replica was down.
func (p *peers) mount(ctx context.Context, mux *http.ServeMux) {
	mux.Handle("POST "+peerConnectPath, p.authentic(p.serveConnect))
	mux.Handle("POST "+peerReleasePath, p.authentic(p.serveRelease))
	mux.Handle("POST "+peerProjectPath, p.authentic(p.serveProject))
	p.dropDeleted(ctx)
}

// authentic admits only calls that carry the cluster's bearer, and hands
// serve their body (at most peerBodyLimit); serve's answer is JSON, or no
// content when it is nil.
func (p *peers) authentic(serve func(ctx context.Context, body []byte) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.s.cluster.PeerAuthentic(auth.Bearer(r.Header.Get("Authorization"))) {
			writePeerError(w, fmt.Errorf("only kiln replicas of this cluster may call %s: %w", r.URL.Path, errdefs.ErrUnauthenticated))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, peerBodyLimit))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				json.NewEncoder(w).Encode(peerError{Kind: "exhausted", Error: fmt.Sprintf("request body larger than %d bytes", peerBodyLimit)})
				return
			}
			writePeerError(w, fmt.Errorf("read the request body: %v: %w", err, errdefs.ErrInvalid))
			return
		}
		out, err := serve(r.Context(), body)
		if err != nil {
			if !writePeerError(w, err) {
				p.s.cfg.Logger.ErrorContext(r.Context(), "a replica's call failed", "path", r.URL.Path, "err", err)
			}
			return
		}
		if out == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
}

// writePeerError answers err with its kind's status; known reports
// whether it has one (the others are Internal, for the caller's log).
func writePeerError(w http.ResponseWriter, err error) (known bool) {
	e, status := peerError{Kind: "internal", Error: err.Error()}, http.StatusInternalServerError
	for _, k := range peerKinds {
		if errors.Is(err, k.err) {
			e.Kind, status, known = k.name, k.status, true
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(e)
	return known
}

// serveConnect connects a running build to this replica's builder (the
// calling replica authorized the build's client).
func (p *peers) serveConnect(ctx context.Context, body []byte) (any, error) {
	var in peerConnectRequest
	if err := json.Unmarshal(body, &in); err != nil || in.BuildID == "" || in.Platform == "" {
		return nil, fmt.Errorf("want JSON {build_id, platform}: %w", errdefs.ErrInvalid)
	}
	c, err := p.s.builds.ConnectHere(ctx, in.BuildID, in.Platform)
	if err != nil {
		return nil, err
	}
	return peerConnection{Ready: c.Ready, WaitMs: c.WaitMs, Addr: c.Addr, ServerName: c.Endpoint.ServerName,
		CACertPEM: c.Endpoint.CACertPEM, CertPEM: c.CertPEM, KeyPEM: c.KeyPEM}, nil
}

// serveRelease releases a build's lease of this replica's builder.
func (p *peers) serveRelease(ctx context.Context, body []byte) (any, error) {
	var in peerConnectRequest
	if err := json.Unmarshal(body, &in); err != nil || in.BuildID == "" || in.Platform == "" {
		return nil, fmt.Errorf("want JSON {build_id, platform}: %w", errdefs.ErrInvalid)
	}
	return nil, p.s.builds.ReleaseHere(ctx, in.BuildID, in.Platform)
}

// serveProject applies a project operation to this replica's builders.
func (p *peers) serveProject(ctx context.Context, body []byte) (any, error) {
	var in peerProjectRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, fmt.Errorf("want JSON {op, project_id, cidrs}: %w", errdefs.ErrInvalid)
	}
	if !pki.ValidProjectID(in.ProjectID) {
		return nil, fmt.Errorf("project id %q: %w", in.ProjectID, errdefs.ErrInvalid)
	}
	return nil, p.apply(ctx, in)
}

// apply runs a project operation on this replica's own builders.
func (p *peers) apply(ctx context.Context, op peerProjectRequest) error {
	switch op.Op {
	case peerOpReset:
		return p.fleet.Reset(ctx, op.ProjectID)
	case peerOpDelete:
		p.revokeProject(op.ProjectID)
		return p.fleet.Reset(ctx, op.ProjectID)
	case peerOpEgress:
		if len(op.CIDRs) > project.MaxEgressAllow {
			return fmt.Errorf("%d CIDRs; at most %d: %w", len(op.CIDRs), project.MaxEgressAllow, errdefs.ErrInvalid)
		}
		for _, c := range op.CIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				return fmt.Errorf("CIDR %q: %w", c, errdefs.ErrInvalid)
			}
		}
		return p.fleet.SetEgressAllow(op.ProjectID, build.EgressPrefixes(op.CIDRs))
	}
	return fmt.Errorf("operation %q: want reset, delete or egress: %w", op.Op, errdefs.ErrInvalid)
}

// dropTimeout bounds dropping one deleted project's builder state.
const dropTimeout = time.Minute

// dropDeleted removes this replica's builder state of projects that no
// longer exist: deleted through another replica while this one was down
// (the deletion's broadcast missed it).
func (p *peers) dropDeleted(ctx context.Context) {
	ids, err := p.builderProjects(ctx)
	if err != nil {
		p.s.cfg.Logger.Warn("list the projects that have builder state", "err", err)
		return
	}
	for _, id := range ids {
		if _, err := p.s.store.GetProject(ctx, id); !errdefs.IsNotFound(err) {
			continue
		}
		// Bounded: a pod slow to go must not hold up the start.
		rctx, cancel := context.WithTimeout(ctx, dropTimeout)
		err := p.fleet.Reset(rctx, id)
		cancel()
		if err != nil {
			p.s.cfg.Logger.Warn("drop the builder state of a deleted project; retried at the next start", "project_id", id, "err", err)
			continue
		}
		p.s.cfg.Logger.Info("dropped the builder state of a deleted project", "project_id", id)
	}
}

// builderProjects lists the projects this replica's builders keep state
// for: those with objects in the namespace of the Kubernetes driver
// (kube.Fleet.Projects), directories under DATA/builders with the local
// one.
func (p *peers) builderProjects(ctx context.Context) ([]string, error) {
	if l, ok := p.fleet.(interface {
		Projects(ctx context.Context) ([]string, error)
	}); ok {
		return l.Projects(ctx)
	}
	entries, err := os.ReadDir(filepath.Join(p.s.cfg.DataDir, "builders"))
	if err != nil {
		return nil, nil // no builder ever started here
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && pki.ValidProjectID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// everywhere applies a project operation here, then on every other live
// replica.
func (p *peers) everywhere(ctx context.Context, op peerProjectRequest) error {
	if err := p.apply(ctx, op); err != nil {
		return err
	}
	return p.broadcast(ctx, op)
}

// The project service's hooks (project.Service's Builders, Revoked and
// Network): each operation reaches the builders of every replica.

func (p *peers) builders() peerBuilders { return peerBuilders{p} }

type peerBuilders struct{ p *peers }

func (b peerBuilders) Reset(ctx context.Context, projectID string) error {
	return b.p.everywhere(ctx, peerProjectRequest{Op: peerOpReset, ProjectID: projectID})
}

// revoked is next, and a deleted project's builders and connections go
// on every other replica too.
func (p *peers) revoked(next revoker) peerRevoker { return peerRevoker{revoker: next, p: p} }

type peerRevoker struct {
	revoker
	p *peers
}

func (r peerRevoker) ProjectDeleted(ctx context.Context, projectID string) {
	r.revoker.ProjectDeleted(ctx, projectID)
	if err := r.p.broadcast(ctx, peerProjectRequest{Op: peerOpDelete, ProjectID: projectID}); err != nil {
		// A replica that missed it drops the state at its next start
		// (dropDeleted), and its gateway re-checks each connection's
		// build, which is gone.
		r.p.s.cfg.Logger.Warn("deleted project: not every replica dropped its builders", "project_id", projectID, "err", err)
	}
}

func (p *peers) network() peerNetwork { return peerNetwork{p} }

type peerNetwork struct{ p *peers }

func (n peerNetwork) SetEgressAllow(projectID string, cidrs []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), peerProjectTimeout)
	defer cancel()
	return n.p.everywhere(ctx, peerProjectRequest{Op: peerOpEgress, ProjectID: projectID, CIDRs: cidrs})
}

var _ build.Cluster = (*cluster.Cluster)(nil)
