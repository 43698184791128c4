package auth_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
)

// A CI job's principal carries what bounds everything it obtains: the
// policies that admitted it and its token's expiry; so does a stored token
// the job obtained, and nothing else.
func TestJobPrincipalIsBounded(t *testing.T) {
	ctx := context.Background()
	st, iss, a := oidcAuth(t, "p")
	now := time.Now()
	if err := st.CreateTrustPolicy(ctx, auth.TrustPolicy{ID: "tp1", ProjectID: "p", OrgID: "o", Provider: auth.ProviderGitHub,
		Owner: "acme", Repo: "app", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	claims := oidctest.GitHubClaims(iss.URL, "kiln", "acme/app")
	exp := now.Add(3 * time.Minute).Truncate(time.Second)
	claims["exp"] = exp.Unix()
	p, err := a.Authenticate(ctx, oidctest.Sign(t, iss.Key(), claims))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Bounded() || !slices.Equal(p.PolicyIDs, []string{"tp1"}) || !p.ExpiresAt.Equal(exp) {
		t.Errorf("job principal: policies %v, expires %v; want [tp1], %v", p.PolicyIDs, p.ExpiresAt, exp)
	}
	if got := p.Until(time.Time{}); !got.Equal(exp) {
		t.Errorf("Until(never) = %v, want %v", got, exp)
	}
	if got := p.Until(now.Add(time.Hour)); !got.Equal(exp) {
		t.Errorf("Until(1h) = %v, want %v", got, exp)
	}
	if got := p.Until(now.Add(time.Minute)); !got.Equal(now.Add(time.Minute)) {
		t.Errorf("Until(1m) = %v, want the shorter", got)
	}
	if p.Expired(now) || !p.Expired(exp) {
		t.Errorf("Expired: before %v, at exp %v", p.Expired(now), p.Expired(exp))
	}
	if ids, err := p.PoliciesIn([]auth.TrustPolicy{{ID: "tp1"}, {ID: "tp9"}}); err != nil || !slices.Equal(ids, []string{"tp1"}) {
		t.Errorf("PoliciesIn = %v, %v", ids, err)
	}
	if _, err := p.PoliciesIn([]auth.TrustPolicy{{ID: "tp9"}}); err == nil {
		t.Errorf("PoliciesIn of a project without the job's policies: no error")
	}

	// Stored tokens: one a job obtained is bounded by its record, any
	// other is not (its expiry stays the record's own business).
	for _, tc := range []struct {
		id       string
		policies []string
		bounded  bool
	}{{"tjob", []string{"tp1"}, true}, {"tplain", nil, false}} {
		secret, hash := auth.NewSecret(auth.TokenPull)
		if err := st.CreateToken(ctx, auth.Token{ID: tc.id, Kind: auth.TokenPull, OrgID: "o", ProjectID: "p", SecretHash: hash,
			CreatedAt: now, ExpiresAt: exp, PolicyIDs: tc.policies}); err != nil {
			t.Fatal(err)
		}
		p, err := a.Authenticate(ctx, secret)
		if err != nil {
			t.Fatal(err)
		}
		if p.Bounded() != tc.bounded || (tc.bounded && !p.ExpiresAt.Equal(exp)) || (!tc.bounded && !p.ExpiresAt.IsZero()) {
			t.Errorf("%s: bounded %v, expires %v", tc.id, p.Bounded(), p.ExpiresAt)
		}
		if !tc.bounded && !p.Until(time.Time{}).IsZero() {
			t.Errorf("%s: an unbounded principal caps lifetimes", tc.id)
		}
	}
}
