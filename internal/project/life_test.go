package project_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

type policyRevoker struct{ removed []string }

func (r *policyRevoker) TokenDeleted(context.Context, string) error { return nil }
func (r *policyRevoker) ProjectDeleted(context.Context, string)     {}
func (r *policyRevoker) PolicyRemoved(_ context.Context, id string) error {
	r.removed = append(r.removed, id)
	return nil
}

// A token a CI job mints expires with the job's token, records the
// policies of its project that admitted the job, and goes with them.
func TestJobMintedTokensAreBounded(t *testing.T) {
	ctx := context.Background()
	st := orgStore(t, "a", "b")
	now := time.Now()
	rev := &policyRevoker{}
	svc := &project.Service{Store: st, Revoked: rev}
	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o"}
	tpA, err := svc.AddTrustPolicy(ctx, org, "a", auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: "acme", Repo: "app"})
	if err != nil {
		t.Fatal(err)
	}
	tpB, err := svc.AddTrustPolicy(ctx, org, "b", auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: "acme", Repo: "app"})
	if err != nil {
		t.Fatal(err)
	}
	exp := now.Add(10 * time.Minute)
	job := auth.Principal{TokenID: "oidc:github:x", Kind: auth.TokenOIDC, OrgID: "o", ProjectIDs: []string{"a", "b"},
		PolicyIDs: []string{tpA.ID, tpB.ID}, ExpiresAt: exp}

	for _, ttl := range []time.Duration{0, time.Hour, project.MaxTokenTTL} {
		tok, _, err := svc.MintToken(ctx, job, project.Mint{Kind: auth.TokenPull, ProjectID: "a", TTL: ttl})
		if err != nil {
			t.Fatalf("MintToken(ttl %s): %v", ttl, err)
		}
		if !tok.ExpiresAt.Equal(exp) {
			t.Errorf("pull token asked for %s expires at %v, want the job's %v", ttl, tok.ExpiresAt, exp)
		}
		if !slices.Equal(tok.PolicyIDs, []string{tpA.ID}) {
			t.Errorf("pull token of a records %v, want only a's policy %s", tok.PolicyIDs, tpA.ID)
		}
	}
	short, _, err := svc.MintToken(ctx, job, project.Mint{Kind: auth.TokenPull, ProjectID: "a", TTL: time.Minute})
	if err != nil || short.ExpiresAt.After(exp) || short.ExpiresAt.Before(now.Add(time.Minute)) {
		t.Errorf("a shorter lifetime is kept: %v, %v", short.ExpiresAt, err)
	}
	// A build token the job's build got mints the same way.
	build := auth.Principal{TokenID: "tok_b", Kind: auth.TokenBuild, OrgID: "o", ProjectID: "a", BuildID: "b1",
		PolicyIDs: []string{tpA.ID}, ExpiresAt: exp}
	if tok, _, err := svc.MintToken(ctx, build, project.Mint{Kind: auth.TokenPull, ProjectID: "a"}); err != nil || !tok.ExpiresAt.Equal(exp) {
		t.Errorf("the job's build mints %v, %v; want a token expiring at %v", tok.ExpiresAt, err, exp)
	}
	// An expired job (within the verifier's clock skew) mints nothing.
	late := job
	late.ExpiresAt = now.Add(-time.Second)
	if _, _, err := svc.MintToken(ctx, late, project.Mint{Kind: auth.TokenPull, ProjectID: "a"}); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("expired job minted: %v, want ErrUnauthenticated", err)
	}

	// Removing a's policy revokes the job's tokens of a, tells the build
	// service, and leaves b's alone.
	ofB, _, err := svc.MintToken(ctx, job, project.Mint{Kind: auth.TokenPull, ProjectID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.RemoveTrustPolicy(ctx, org, "a", tpA.ID); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rev.removed, []string{tpA.ID}) {
		t.Errorf("revoker told %v, want %s", rev.removed, tpA.ID)
	}
	if _, err := st.GetToken(ctx, short.ID); !errdefs.IsNotFound(err) {
		t.Errorf("the job's token of a after its policy was removed: %v", err)
	}
	if _, err := st.GetToken(ctx, ofB.ID); err != nil {
		t.Errorf("the job's token of b went with a's policy: %v", err)
	}
	// ... and the job, authenticated before, mints nothing more in a.
	if _, _, err := svc.MintToken(ctx, job, project.Mint{Kind: auth.TokenPull, ProjectID: "a"}); !errors.Is(err, errdefs.ErrPermission) && !errdefs.IsNotFound(err) {
		t.Errorf("MintToken after the policy was removed: %v, want refused", err)
	}
}
