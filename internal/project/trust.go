package project

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// MaxTrustPolicies bounds one project's policies.
const MaxTrustPolicies = 100

// ListTrustPolicies lists a project's trust policies. Like tokens, they
// are the project's administration: organization tokens only.
func (s *Service) ListTrustPolicies(ctx context.Context, p auth.Principal, projectID string) ([]auth.TrustPolicy, error) {
	proj, err := s.admin(ctx, p, projectID, "listing trust policies")
	if err != nil {
		return nil, err
	}
	return s.Store.ListTrustPolicies(ctx, proj.ID)
}

// AddTrustPolicy lets CI jobs matching in (Provider, Owner, Repo, and the
// ids, conditions and role it sets; see auth.TrustPolicy) build in the
// project. Adding a policy the project already has (names ignoring case)
// returns the existing one, so CI setup scripts can run it again.
func (s *Service) AddTrustPolicy(ctx context.Context, p auth.Principal, projectID string, in auth.TrustPolicy) (auth.TrustPolicy, error) {
	proj, err := s.admin(ctx, p, projectID, "adding a trust policy")
	if err != nil {
		return auth.TrustPolicy{}, err
	}
	owner, repo, err := NormalizeTrustPolicy(in.Provider, in.Owner, in.Repo)
	if err != nil {
		return auth.TrustPolicy{}, err
	}
	want := in
	want.Owner, want.Repo = owner, repo
	if err := normalizeConditions(&want); err != nil {
		return auth.TrustPolicy{}, err
	}
	have, err := s.Store.ListTrustPolicies(ctx, proj.ID)
	if err != nil {
		return auth.TrustPolicy{}, err
	}
	for _, tp := range have {
		if tp.Provider == in.Provider && strings.EqualFold(tp.Owner, owner) && strings.EqualFold(tp.Repo, repo) && sameConditions(tp, want) {
			return tp, nil
		}
	}
	if len(have) >= MaxTrustPolicies {
		return auth.TrustPolicy{}, fmt.Errorf("project %q has %d trust policies, the most allowed: %w", proj.ID, len(have), errdefs.ErrExhausted)
	}
	tp := want
	tp.ID, tp.ProjectID, tp.OrgID, tp.CreatedAt = "tp_"+NewID(), proj.ID, proj.OrgID, time.Now().UTC()
	return tp, s.Store.CreateTrustPolicy(ctx, tp)
}

// RemoveTrustPolicy deletes one of the project's policies; CI jobs it
// admitted are refused from their next request on, and what they obtained
// is revoked: the store deletes their tokens with the policy, and the
// builds they started end (Revoker.PolicyRemoved).
func (s *Service) RemoveTrustPolicy(ctx context.Context, p auth.Principal, projectID, policyID string) error {
	proj, err := s.admin(ctx, p, projectID, "removing a trust policy")
	if err != nil {
		return err
	}
	if policyID == "" {
		return fmt.Errorf("trust policy id is required: %w", errdefs.ErrInvalid)
	}
	tp, err := s.Store.GetTrustPolicy(ctx, policyID)
	if err != nil {
		return err
	}
	if tp.ProjectID != proj.ID {
		// Another project's policy is as absent as a missing one.
		return fmt.Errorf("trust policy %q: %w", policyID, errdefs.ErrNotFound)
	}
	if err := s.Store.RevokeTrustPolicy(ctx, policyID); err != nil {
		return err
	}
	if s.Revoked != nil {
		if err := s.Revoked.PolicyRemoved(ctx, policyID); err != nil {
			return fmt.Errorf("trust policy removed and its jobs' tokens revoked, but ending the builds they started failed (their builder access is already refused; they end at their health timeout): %w", err)
		}
	}
	return nil
}

var (
	// GitHub owners are alphanumerics and hyphens; GitHub Enterprise
	// Server also allows underscores and dots from identity providers.
	ghOwner = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)
	ghRepo  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)
	uuidRE  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	bkSlug  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)
	// One GitLab path segment (a group, subgroup or project path).
	glSegment = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$`)
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
}

func validSlug(re *regexp.Regexp, s string) bool {
	return re.MatchString(s) && s != "." && s != ".."
}

// NormalizeTrustPolicy checks a policy's two match fields for its
// provider and returns them in stored form (trimmed; CircleCI UUIDs
// lowercased; GitLab's project as its full path).
func NormalizeTrustPolicy(provider, owner, repo string) (string, string, error) {
	owner, repo = strings.TrimSpace(owner), strings.TrimSpace(repo)
	switch provider {
	case auth.ProviderGitHub:
		if !validSlug(ghOwner, owner) {
			return "", "", invalidf("GitHub repository owner %q: want 1-100 letters, digits, '-', '_' or '.'", truncInput(owner))
		}
		name := repo
		if o, n, ok := strings.Cut(repo, "/"); ok {
			if !strings.EqualFold(o, owner) {
				return "", "", invalidf("GitHub repository %q is not under owner %q", truncInput(repo), owner)
			}
			name = n
		}
		if !validSlug(ghRepo, name) {
			return "", "", invalidf("GitHub repository %q: want \"repo\" or \"owner/repo\" (letters, digits, '-', '_', '.')", truncInput(repo))
		}
		return owner, repo, nil
	case auth.ProviderCircleCI:
		if !uuidRE.MatchString(owner) {
			return "", "", invalidf("CircleCI organization %q: want the organization's UUID (Organization Settings → Overview)", truncInput(owner))
		}
		if !uuidRE.MatchString(repo) {
			return "", "", invalidf("CircleCI project %q: want the project's UUID (Project Settings → Overview)", truncInput(repo))
		}
		return strings.ToLower(owner), strings.ToLower(repo), nil
	case auth.ProviderBuildkite:
		if !validSlug(bkSlug, owner) {
			return "", "", invalidf("Buildkite organization slug %q: want 1-100 letters, digits, '-', '_' or '.'", truncInput(owner))
		}
		if !validSlug(bkSlug, repo) {
			return "", "", invalidf("Buildkite pipeline slug %q: want 1-100 letters, digits, '-', '_' or '.'", truncInput(repo))
		}
		return owner, repo, nil
	case auth.ProviderGitLab:
		if !validGitLabPath(owner, 20) {
			return "", "", invalidf("GitLab namespace %q: want a group path like \"group\" or \"group/subgroup\"", truncInput(owner))
		}
		full := repo
		if !strings.Contains(repo, "/") {
			full = owner + "/" + repo
		}
		ns, name, _ := cutLast(full, "/")
		if !strings.EqualFold(ns, owner) || !validGitLabPath(name, 1) {
			return "", "", invalidf("GitLab project %q: want \"project\" or its full path under namespace %q", truncInput(repo), owner)
		}
		return owner, full, nil
	case "":
		return "", "", invalidf("a trust policy needs a provider (github, circleci, buildkite or gitlab)")
	}
	return "", "", invalidf("unknown trust policy provider %q (github, circleci, buildkite or gitlab)", truncInput(provider))
}

var (
	providerID = regexp.MustCompile(`^[0-9]{1,20}$`)
	eventName  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// normalizeConditions checks a policy's kiln extensions (ids, conditions,
// role) and stores the default role as "". Conditions apply to GitHub and
// GitLab, whose tokens carry the claims; a CircleCI or Buildkite policy
// with one would never match, so it is refused instead.
func normalizeConditions(tp *auth.TrustPolicy) error {
	if tp.Role == auth.RoleBuild {
		tp.Role = ""
	}
	if tp.Role != "" && tp.Role != auth.RoleProject {
		return invalidf("trust policy role %q: want %q (the default) or %q", truncInput(tp.Role), auth.RoleBuild, auth.RoleProject)
	}
	fields := []struct{ name, val string }{
		{"repository id", tp.RepoID}, {"owner id", tp.OwnerID}, {"ref", tp.Ref}, {"ref type", tp.RefType},
		{"event", tp.Event}, {"environment", tp.Environment}, {"workflow", tp.Workflow},
	}
	switch tp.Provider {
	case auth.ProviderGitHub, auth.ProviderGitLab:
	default:
		for _, f := range fields {
			if f.val != "" {
				return invalidf("a %s trust policy cannot restrict the %s: only GitHub and GitLab tokens carry it", tp.Provider, f.name)
			}
		}
		return nil
	}
	ids := "repository_id and repository_owner_id"
	if tp.Provider == auth.ProviderGitLab {
		ids = "project_id and namespace_id"
	}
	for _, id := range []string{tp.RepoID, tp.OwnerID} {
		if id != "" && !providerID.MatchString(id) {
			return invalidf("id %q: want the decimal number of the token's %s claim", truncInput(id), ids)
		}
	}
	if tp.RefType != "" && tp.RefType != "branch" && tp.RefType != "tag" {
		return invalidf("ref type %q: want \"branch\" or \"tag\"", truncInput(tp.RefType))
	}
	if tp.Event != "" && !eventName.MatchString(tp.Event) {
		return invalidf("event %q: want an event name such as \"push\" (GitHub event_name, GitLab pipeline_source)", truncInput(tp.Event))
	}
	if tp.Workflow != "" && tp.Provider != auth.ProviderGitHub {
		return invalidf("only GitHub tokens name their workflow (job_workflow_ref)")
	}
	for _, f := range []struct {
		name, val string
		max       int
	}{{"ref", tp.Ref, 255}, {"environment", tp.Environment, 255}, {"workflow", tp.Workflow, 512}} {
		if len(f.val) > f.max || strings.IndexFunc(f.val, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			return invalidf("%s %q: want at most %d printable ASCII characters without spaces", f.name, truncInput(f.val), f.max)
		}
	}
	return nil
}

// sameConditions compares two policies' extensions (names are compared by
// the caller).
func sameConditions(a, b auth.TrustPolicy) bool {
	return a.RepoID == b.RepoID && a.OwnerID == b.OwnerID && a.Ref == b.Ref && a.RefType == b.RefType &&
		a.Event == b.Event && a.Environment == b.Environment && a.Workflow == b.Workflow && a.Role == b.Role
}

func validGitLabPath(p string, maxSegments int) bool {
	if p == "" || len(p) > 255 {
		return false
	}
	segs := strings.Split(p, "/")
	if len(segs) > maxSegments {
		return false
	}
	for _, s := range segs {
		if !validSlug(glSegment, s) || strings.HasSuffix(s, ".") || strings.HasSuffix(strings.ToLower(s), ".git") {
			return false
		}
	}
	return true
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return "", s, false
}

// trunc bounds user input echoed in messages.
func truncInput(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}
