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
	// project_ids, trust_policy_ids.
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
// projects and administer nothing; it lives as long as the request (the
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
	var projects, policies []string
	for _, tp := range matched {
		if tp.OrgID != org {
			continue
		}
		policies = append(policies, tp.ID)
		if !slices.Contains(projects, tp.ProjectID) {
			projects = append(projects, tp.ProjectID)
		}
	}
	a.audit(ctx, AuditTrustPolicyMatched, append(who, "issuer", id.Issuer, "org_id", org,
		"project_ids", strings.Join(projects, ","), "trust_policy_ids", strings.Join(policies, ","))...)
	return Principal{
		TokenID:    "oidc:" + string(id.Provider) + ":" + id.Subject,
		Kind:       TokenOIDC,
		OrgID:      org,
		ProjectIDs: projects,
		PolicyIDs:  policies,
		ExpiresAt:  id.ExpiresAt,
	}, nil
}

// policyMatches compares a policy with a verified identity, ignoring ASCII
// case (GitHub and GitLab names are case-insensitive; CircleCI's UUIDs and
// Buildkite's slugs are lowercase anyway).
//
// GitHub's repository claim is "owner/repo". Depot's policies name the
// repository without its owner, so a policy's Repo is either a name
// relative to its Owner ("repo", no slash) or the full "owner/repo".
// GitLab is treated the same way: "app" under namespace "group/sub", or
// "group/sub/app".
func policyMatches(tp TrustPolicy, id Identity) bool {
	if tp.Provider != string(id.Provider) || !strings.EqualFold(tp.Owner, id.Owner) {
		return false
	}
	switch id.Provider {
	case ProviderGitHub, ProviderGitLab:
		full := tp.Repo
		if !strings.Contains(full, "/") { // a name relative to the owner
			full = tp.Owner + "/" + tp.Repo
		}
		return strings.EqualFold(full, id.Repo)
	}
	return strings.EqualFold(tp.Repo, id.Repo)
}
