// Package project is the domain of projects and their tokens: creation,
// cache policy, deletion (which empties the project's builders) and the
// bootstrap of the first organization. It owns the Project and Organization
// records and reads them through its small Store (records.go; internal/store
// implements it). It knows nothing of Connect, HTTP or SQL; callers pass
// the authenticated auth.Principal and get errdefs kinds back.
package project

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// BuilderResetter empties a project's builder state (its layer cache).
type BuilderResetter interface {
	Reset(ctx context.Context, projectID string) error
}

// Service implements project and token operations.
type Service struct {
	Store    Store
	Builders BuilderResetter
	// Audit records token creation and deletion; nil records nothing.
	Audit *audit.Recorder
	// Revoked is told when a token or a project is deleted, after the
	// store forgot it, so that nothing they made outlives them: builds a
	// token created end, a project's builder connections are cut. nil:
	// nobody to tell.
	Revoked Revoker
	// Network applies a changed egress allow-list to the project's running
	// builders; nil: it applies at their next start.
	Network EgressApplier
}

// EgressApplier applies a project's egress allow-list (canonical CIDRs).
type EgressApplier interface {
	SetEgressAllow(projectID string, cidrs []string) error
}

// Revoker ends what a deleted token or project still holds.
type Revoker interface {
	TokenDeleted(ctx context.Context, tokenID string) error
	// PolicyRemoved ends the builds of the CI jobs a removed trust policy
	// admitted.
	PolicyRemoved(ctx context.Context, policyID string) error
	ProjectDeleted(ctx context.Context, projectID string)
}

// NewID returns a lowercase id like Depot's ("k3v9x0ab2mqd").
func NewID() string { return strings.ToLower(auth.RandomString(12)) }

func validName(name string) error {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 || !utf8.ValidString(name) || strings.ContainsAny(name, "\x00\n\r") {
		return fmt.Errorf("project name must be 1-100 printable characters: %w", errdefs.ErrInvalid)
	}
	return nil
}

// denied hides whether a project exists from callers who may not see it.
func denied(id string) error {
	return fmt.Errorf("project %q: %w", id, errdefs.ErrNotFound)
}

// Get returns a project the principal may see.
func (s *Service) Get(ctx context.Context, p auth.Principal, id string) (Project, error) {
	if id == "" {
		return Project{}, fmt.Errorf("project id is required: %w", errdefs.ErrInvalid)
	}
	if p.Kind == auth.TokenBuild {
		// Before the lookup, so the answer is the same for any project id.
		return Project{}, fmt.Errorf("build tokens reach only their build: %w", errdefs.ErrPermission)
	}
	proj, err := s.Store.GetProject(ctx, id)
	if err != nil {
		return Project{}, err
	}
	if !p.CanSeeProject(proj) {
		return Project{}, denied(id)
	}
	return proj, nil
}

// List returns the projects the principal may see.
func (s *Service) List(ctx context.Context, p auth.Principal) ([]Project, error) {
	switch p.Kind {
	case auth.TokenOrg:
		return s.Store.ListProjects(ctx, p.OrgID)
	case auth.TokenProject, auth.TokenOIDC:
		ids := p.ProjectIDs
		if p.Kind == auth.TokenProject {
			ids = []string{p.ProjectID}
		}
		var out []Project
		for _, id := range ids {
			proj, err := s.Store.GetProject(ctx, id)
			if errdefs.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, proj)
		}
		return out, nil
	}
	return nil, fmt.Errorf("build tokens cannot list projects: %w", errdefs.ErrPermission)
}

func requireOrg(p auth.Principal, what string) error {
	if !p.IsOrg() {
		return fmt.Errorf("%s needs an organization token: %w", what, errdefs.ErrPermission)
	}
	return nil
}

// Create makes a project in the principal's organization.
func (s *Service) Create(ctx context.Context, p auth.Principal, proj Project) (Project, error) {
	if err := requireOrg(p, "creating a project"); err != nil {
		return Project{}, err
	}
	if proj.OrgID != "" && proj.OrgID != p.OrgID {
		return Project{}, fmt.Errorf("organization %q: %w", proj.OrgID, errdefs.ErrPermission)
	}
	if err := validName(proj.Name); err != nil {
		return Project{}, err
	}
	if err := validPolicy(proj); err != nil {
		return Project{}, err
	}
	proj.ID, proj.OrgID, proj.CreatedAt = NewID(), p.OrgID, time.Now().UTC()
	proj.Name = strings.TrimSpace(proj.Name)
	if err := s.Store.CreateProject(ctx, proj); err != nil {
		return Project{}, err
	}
	return proj, nil
}

func validPolicy(proj Project) error {
	if proj.KeepGB < 0 || proj.KeepDays < 0 || proj.KeepGB > 100000 || proj.KeepDays > 3650 {
		return fmt.Errorf("cache policy keep_gb must be 0-100000 and keep_days 0-3650: %w", errdefs.ErrInvalid)
	}
	return nil
}

// admin returns a project the principal may administer.
func (s *Service) admin(ctx context.Context, p auth.Principal, id, what string) (Project, error) {
	proj, err := s.Get(ctx, p, id)
	if err != nil {
		return Project{}, err
	}
	if !p.CanAdminProject(proj) {
		return Project{}, fmt.Errorf("%s needs an organization token: %w", what, errdefs.ErrPermission)
	}
	return proj, nil
}

// Update applies fn to a project the principal administers.
func (s *Service) Update(ctx context.Context, p auth.Principal, id string, fn func(*Project)) (Project, error) {
	proj, err := s.admin(ctx, p, id, "changing a project")
	if err != nil {
		return Project{}, err
	}
	fn(&proj)
	if err := validName(proj.Name); err != nil {
		return Project{}, err
	}
	if err := validPolicy(proj); err != nil {
		return Project{}, err
	}
	return proj, s.Store.UpdateProject(ctx, proj)
}

// Delete removes a project, its tokens and builds, and its builders' state.
func (s *Service) Delete(ctx context.Context, p auth.Principal, id string) error {
	if err := requireOrg(p, "deleting a project"); err != nil {
		return err
	}
	if _, err := s.Get(ctx, p, id); err != nil {
		return err
	}
	if err := s.Builders.Reset(ctx, id); err != nil {
		return fmt.Errorf("empty builders of project %q: %w", id, err)
	}
	if err := s.Store.DeleteProject(ctx, id); err != nil {
		return err
	}
	if s.Revoked != nil {
		s.Revoked.ProjectDeleted(ctx, id)
	}
	return nil
}

// ResetCache empties the project's builder state: the next build starts cold.
func (s *Service) ResetCache(ctx context.Context, p auth.Principal, id string) (Project, error) {
	proj, err := s.Get(ctx, p, id)
	if err != nil {
		return Project{}, err
	}
	if !p.CanManage(proj) {
		return Project{}, fmt.Errorf("resetting the cache of project %q: a CI job's default role may not; a trust policy with role %q may: %w",
			id, auth.RoleProject, errdefs.ErrPermission)
	}
	return proj, s.Builders.Reset(ctx, id)
}

// ListTokens lists a project's tokens (never their secrets).
func (s *Service) ListTokens(ctx context.Context, p auth.Principal, projectID string) ([]auth.Token, error) {
	proj, err := s.admin(ctx, p, projectID, "listing tokens")
	if err != nil {
		return nil, err
	}
	return s.Store.ListTokens(ctx, proj.OrgID, proj.ID)
}

// CreateToken mints a project token; the secret is returned once.
func (s *Service) CreateToken(ctx context.Context, p auth.Principal, projectID, description string, ttl time.Duration) (auth.Token, string, error) {
	return s.MintToken(ctx, p, Mint{Kind: auth.TokenProject, ProjectID: projectID, Description: description, TTL: ttl})
}

// Mint describes a token to create.
type Mint struct {
	Kind      auth.TokenKind // auth.TokenProject, TokenPull or TokenOrg
	ProjectID string         // project and pull tokens
	// BuildID narrows a pull token to one build's saved image (the
	// registry's buildscope.go); the caller checks the build is in
	// ProjectID and may be seen.
	BuildID     string
	Description string
	TTL         time.Duration // 0: never expires
}

// MaxTokenTTL bounds token lifetimes (ten years reads as "no expiry" to a
// user; anything longer is a typo).
const MaxTokenTTL = 10 * 365 * 24 * time.Hour

// MintToken creates a token of any user-facing kind. Organization and
// project tokens need an organization token; a pull token (read-only
// registry access) may be minted by anyone who can see the project, so a
// CI job can hand a deploy target a short-lived pull credential.
func (s *Service) MintToken(ctx context.Context, p auth.Principal, m Mint) (auth.Token, string, error) {
	if len(m.Description) > 500 {
		return auth.Token{}, "", fmt.Errorf("token description longer than 500 characters: %w", errdefs.ErrInvalid)
	}
	if m.TTL < 0 || m.TTL > MaxTokenTTL {
		return auth.Token{}, "", fmt.Errorf("token lifetime %s: must be between 0 (no expiry) and 10 years: %w", m.TTL, errdefs.ErrInvalid)
	}
	t := auth.Token{ID: "tok_" + NewID(), Kind: m.Kind, OrgID: p.OrgID, Description: m.Description, CreatedAt: time.Now().UTC()}
	switch m.Kind {
	case auth.TokenOrg:
		if m.ProjectID != "" {
			return auth.Token{}, "", fmt.Errorf("organization tokens belong to no project; leave the project empty: %w", errdefs.ErrInvalid)
		}
		if err := requireOrg(p, "creating an organization token"); err != nil {
			return auth.Token{}, "", err
		}
	case auth.TokenProject:
		proj, err := s.admin(ctx, p, m.ProjectID, "creating a project token")
		if err != nil {
			return auth.Token{}, "", err
		}
		t.ProjectID = proj.ID
	case auth.TokenPull:
		var proj Project
		var err error
		if p.Kind == auth.TokenBuild && p.ProjectID == m.ProjectID {
			// A build may hand out read access to what it built.
			proj, err = s.Store.GetProject(ctx, m.ProjectID)
		} else {
			proj, err = s.Get(ctx, p, m.ProjectID)
		}
		if err != nil {
			return auth.Token{}, "", err
		}
		t.ProjectID = proj.ID
		t.BuildID = m.BuildID
	default:
		return auth.Token{}, "", fmt.Errorf("token kind %q: use project, pull or organization: %w", m.Kind, errdefs.ErrInvalid)
	}
	if m.TTL > 0 {
		t.ExpiresAt = t.CreatedAt.Add(m.TTL)
	}
	if p.Bounded() {
		// A CI job's token (or one it obtained): the new token expires
		// with the job's and goes with the policies that admitted it.
		if t.ExpiresAt = p.Until(t.ExpiresAt); !t.ExpiresAt.After(t.CreatedAt) {
			return auth.Token{}, "", fmt.Errorf("the CI job's token expired at %s; get a fresh one: %w", p.ExpiresAt.UTC().Format(time.RFC3339), errdefs.ErrUnauthenticated)
		}
		tps, err := s.Store.ListTrustPolicies(ctx, t.ProjectID)
		if err != nil {
			return auth.Token{}, "", err
		}
		if t.PolicyIDs, err = p.PoliciesIn(tps); err != nil {
			return auth.Token{}, "", err
		}
	}
	secret, hash := auth.NewSecret(m.Kind)
	t.SecretHash = hash
	if err := s.Store.CreateToken(ctx, t); err != nil {
		return auth.Token{}, "", err
	}
	s.auditToken(ctx, audit.KindTokenCreated, p, t)
	return t, secret, nil
}

// ListOrgTokens lists the organization's own tokens (not projects').
func (s *Service) ListOrgTokens(ctx context.Context, p auth.Principal) ([]auth.Token, error) {
	if err := requireOrg(p, "listing organization tokens"); err != nil {
		return nil, err
	}
	return s.Store.ListTokens(ctx, p.OrgID, "")
}

// tokenFor returns a token the principal may manage.
func (s *Service) tokenFor(ctx context.Context, p auth.Principal, id string) (auth.Token, error) {
	t, err := s.Store.GetToken(ctx, id)
	if err != nil {
		return auth.Token{}, err
	}
	if t.Kind == auth.TokenBuild || t.OrgID != p.OrgID {
		return auth.Token{}, fmt.Errorf("token %q: %w", id, errdefs.ErrNotFound)
	}
	if t.ProjectID == "" {
		if !p.IsOrg() {
			return auth.Token{}, fmt.Errorf("token %q: %w", id, errdefs.ErrNotFound)
		}
		return t, nil
	}
	if _, err := s.admin(ctx, p, t.ProjectID, "managing tokens"); err != nil {
		return auth.Token{}, fmt.Errorf("token %q: %w", id, errdefs.ErrNotFound)
	}
	return t, nil
}

// UpdateToken changes a token's description.
func (s *Service) UpdateToken(ctx context.Context, p auth.Principal, id, description string) error {
	if _, err := s.tokenFor(ctx, p, id); err != nil {
		return err
	}
	return s.Store.UpdateToken(ctx, id, description)
}

// DeleteToken revokes a token; the next request with it is refused.
func (s *Service) DeleteToken(ctx context.Context, p auth.Principal, id string) error {
	t, err := s.tokenFor(ctx, p, id)
	if err != nil {
		return err
	}
	if err := s.Store.DeleteToken(ctx, id); err != nil {
		return err
	}
	s.auditToken(ctx, audit.KindTokenDeleted, p, t)
	if s.Revoked != nil {
		if err := s.Revoked.TokenDeleted(ctx, id); err != nil {
			return fmt.Errorf("token deleted, but ending the builds it started failed (they end at their health timeout): %w", err)
		}
	}
	return nil
}

// Bootstrap creates the first organization and its admin token when the
// store has none, writing the token to tokenPath (0600). It never logs the
// token. It reports whether it created anything.
func Bootstrap(ctx context.Context, st BootstrapStore, tokenPath string) (bool, error) {
	orgs, err := st.ListOrganizations(ctx)
	if err != nil {
		return false, err
	}
	if len(orgs) > 0 {
		if _, err := os.Stat(tokenPath); errors.Is(err, os.ErrNotExist) {
			return false, nil // the operator moved the token away; that is fine
		}
		return false, nil
	}
	org := Organization{ID: "org_" + NewID(), Name: "default", CreatedAt: time.Now().UTC()}
	secret, hash := auth.NewSecret(auth.TokenOrg)
	// Write the file first: a crash between the two leaves no org without a
	// token, and the next start simply writes a new one.
	if err := os.MkdirAll(filepath.Dir(tokenPath), 0o700); err != nil {
		return false, err
	}
	if err := os.WriteFile(tokenPath, []byte(secret+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("write admin token: %w", err)
	}
	if err := st.CreateOrganization(ctx, org); err != nil {
		return false, err
	}
	t := auth.Token{ID: "tok_" + NewID(), Kind: auth.TokenOrg, OrgID: org.ID, Description: "bootstrap admin",
		SecretHash: hash, CreatedAt: org.CreatedAt}
	return true, st.CreateToken(ctx, t)
}
