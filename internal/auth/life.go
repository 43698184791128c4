package auth

import (
	"fmt"
	"slices"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Nothing a CI job obtains outlives it. A job's principal (TokenOIDC), and
// a stored token the job obtained (a build token of a build it started, a
// pull token it minted), is bounded: it carries the trust policies that
// admitted the job (PolicyIDs) and when the job's token expires
// (ExpiresAt). Whatever such a principal obtains in turn — tokens, builds,
// registry tokens, builder certificates — expires no later (Until) and
// records the policies of its project (PoliciesIn), so that removing one
// of them revokes it (the store deletes the tokens, the build service ends
// the builds).

// Bounded reports a principal that is, or descends from, a CI job.
func (p Principal) Bounded() bool { return len(p.PolicyIDs) > 0 }

// Until is when a credential p obtains must expire, given the expiry it
// would otherwise have (zero: never): the earlier of the two for a
// bounded principal, exp unchanged for any other.
func (p Principal) Until(exp time.Time) time.Time {
	if !p.Bounded() || p.ExpiresAt.IsZero() {
		return exp
	}
	if exp.IsZero() || p.ExpiresAt.Before(exp) {
		return p.ExpiresAt
	}
	return exp
}

// PoliciesIn is what a credential p obtains for one project records: those
// of p's policies that are among that project's current policies. For a
// bounded principal an empty answer means the policies that let it into
// the project are gone; the error says so.
func (p Principal) PoliciesIn(projectPolicies []TrustPolicy) ([]string, error) {
	if !p.Bounded() {
		return nil, nil
	}
	var out []string
	for _, tp := range projectPolicies {
		if slices.Contains(p.PolicyIDs, tp.ID) && !slices.Contains(out, tp.ID) {
			out = append(out, tp.ID)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the trust policy that admitted this CI job was removed; ask the project's administrator to add one: %w", errdefs.ErrPermission)
	}
	return out, nil
}

// Expired reports a bounded principal whose job's token has expired at now.
func (p Principal) Expired(now time.Time) bool {
	return p.Bounded() && !p.ExpiresAt.IsZero() && !now.Before(p.ExpiresAt)
}
