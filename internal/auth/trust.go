package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// OIDCVerifier checks a CI provider's OIDC token (*oidc.Verifier).
type OIDCVerifier interface {
	Verify(ctx context.Context, raw string) (Identity, error)
}

// Audit events. Attributes are slog-style key/value pairs.
const (
	// AuditTrustPolicyMatched: a CI job's OIDC token matched trust
	// policies. Attributes: provider, issuer, subject, owner, repo, org_id,
	// project_ids, wide_project_ids, trust_policy_ids.
	AuditTrustPolicyMatched = "oidc.trust_policy_matched"
	// AuditOIDCDenied: an OIDC token was refused. Attributes: reason, and
	// provider, subject, owner, repo once the token verified.
	AuditOIDCDenied = "oidc.denied"
)

func (a *Authenticator) audit(ctx context.Context, event string, attrs ...any) {
	if a.Audit != nil {
		a.Audit(ctx, event, attrs...)
	}
}

// authenticateOIDC verifies a CI job's JWT and matches it against every
// project's trust policies. The principal may build in the matched
// projects (with the default role, or a project token's rights where a
// matched policy's Role is RoleProject) and administer nothing; it lives as long as the request (the
// token's own exp bounds reuse).
//
// Denials say why (expired, wrong audience, unknown issuer, …, or which
// repository no policy matches) but never which projects or policies
// exist: the repository named is the caller's own claim.
func (a *Authenticator) authenticateOIDC(ctx context.Context, raw string) (Principal, error) {
	if a.OIDC == nil {
		err := fmt.Errorf("this server accepts no OIDC tokens: %w", errdefs.ErrUnauthenticated)
		a.audit(ctx, AuditOIDCDenied, "reason", err.Error())
		return Principal{}, err
	}
	id, err := a.OIDC.Verify(ctx, raw)
	if err != nil {
		a.audit(ctx, AuditOIDCDenied, "reason", err.Error())
		if !errors.Is(err, errdefs.ErrUnauthenticated) && !errors.Is(err, errdefs.ErrUnavailable) {
			return Principal{}, fmt.Errorf("verify OIDC token: %w", err)
		}
		return Principal{}, err
	}
	who := []any{"provider", string(id.Provider), "subject", id.Subject, "owner", id.Owner, "repo", id.Repo}
	candidates, err := a.Store.MatchTrustPolicies(ctx, string(id.Provider), id.Owner)
	if err != nil {
		return Principal{}, fmt.Errorf("look up trust policies: %w", err)
	}
	var matched []TrustPolicy
	for _, tp := range candidates {
		if policyMatches(tp, id) {
			matched = append(matched, tp)
		}
	}
	if len(matched) == 0 {
		err := fmt.Errorf("no trust policy matches %s: %w", id, errdefs.ErrPermission)
		a.audit(ctx, AuditOIDCDenied, append([]any{"reason", err.Error()}, who...)...)
		return Principal{}, err
	}
	// A principal belongs to one organization. Should policies of several
	// organizations match, the oldest policy's organization wins; kiln
	// runs one organization per server today.
	org := matched[0].OrgID
	var projects, policies, wide []string
	for _, tp := range matched {
		if tp.OrgID != org {
			continue
		}
		policies = append(policies, tp.ID)
		if !slices.Contains(projects, tp.ProjectID) {
			projects = append(projects, tp.ProjectID)
		}
		// The widest role any matched policy of a project grants.
		if tp.Role == RoleProject && !slices.Contains(wide, tp.ProjectID) {
			wide = append(wide, tp.ProjectID)
		}
	}
	a.audit(ctx, AuditTrustPolicyMatched, append(who, "issuer", id.Issuer, "org_id", org,
		"project_ids", strings.Join(projects, ","), "wide_project_ids", strings.Join(wide, ","), "trust_policy_ids", strings.Join(policies, ","))...)
	return Principal{
		TokenID:        "oidc:" + string(id.Provider) + ":" + id.Subject,
		Kind:           TokenOIDC,
		OrgID:          org,
		ProjectIDs:     projects,
		WideProjectIDs: wide,
		PolicyIDs:      policies,
		ExpiresAt:      id.ExpiresAt,
	}, nil
}

// policyMatches compares a policy with a verified identity. Names are
// compared ignoring ASCII case only (GitHub and GitLab names are
// case-insensitive ASCII; CircleCI's UUIDs and Buildkite's slugs are
// lowercase anyway): Unicode folding would let "acme/\u212Ait" (a Kelvin
// sign) match "acme/kit".
//
// GitHub's repository claim is "owner/repo". Depot's policies name the
// repository without its owner, so a policy's Repo is either a name
// relative to its Owner ("repo", no slash) or the full "owner/repo".
// GitLab is treated the same way: "app" under namespace "group/sub", or
// "group/sub/app".
//
// Every condition a policy sets must hold as well (conditionsHold).
func policyMatches(tp TrustPolicy, id Identity) bool {
	if tp.Provider != string(id.Provider) || !asciiEqualFold(tp.Owner, id.Owner) {
		return false
	}
	switch id.Provider {
	case ProviderGitHub, ProviderGitLab:
		full := tp.Repo
		if !strings.Contains(full, "/") { // a name relative to the owner
			full = tp.Owner + "/" + tp.Repo
		}
		if !asciiEqualFold(full, id.Repo) {
			return false
		}
	default:
		if !asciiEqualFold(tp.Repo, id.Repo) {
			return false
		}
	}
	return conditionsHold(tp, id)
}

// conditionsHold checks a policy's kiln extensions: each one set must
// equal the job's claim (Ref and Workflow: match it as a glob). A claim the
// token lacks never satisfies a condition. The ids are the provider's
// immutable ones, compared exactly, so a deleted and recreated repository
// or organization of the same name does not match.
func conditionsHold(tp TrustPolicy, id Identity) bool {
	exact := [][2]string{
		{tp.RepoID, id.RepoID}, {tp.OwnerID, id.OwnerID},
		{tp.RefType, id.RefType}, {tp.Event, id.Event}, {tp.Environment, id.Environment},
	}
	for _, c := range exact {
		if c[0] != "" && c[0] != c[1] {
			return false
		}
	}
	if tp.Ref != "" && (id.Ref == "" || !GlobMatch(tp.Ref, id.Ref)) {
		return false
	}
	if tp.Workflow != "" && (id.Workflow == "" || !GlobMatch(tp.Workflow, id.Workflow)) {
		return false
	}
	return true
}

// GlobMatch reports whether s matches pattern, in which '*' stands for
// any run of characters, '/' included ("refs/heads/release/*" matches
// "refs/heads/release/1.2/fix"), and every other byte stands for itself.
func GlobMatch(pattern, s string) bool {
	// Greedy matching with one backtrack point: the last '*' seen.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			mark++
			p, i = star+1, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// asciiEqualFold is strings.EqualFold for ASCII letters only: any other
// byte must be equal.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
