package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// jobCredentials: what a CI job obtained records the trust policies that
// admitted it; removing one deletes exactly the tokens recording it, and
// nothing is recorded against a policy already gone.
func jobCredentials(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	for _, id := range []string{"tp_a1", "tp_b1", "tpXa1"} { // '_' is a LIKE wildcard: tpXa1 must not match tp_a1
		if err := s.CreateTrustPolicy(ctx, auth.TrustPolicy{ID: id, ProjectID: "p1", OrgID: "o1", Provider: auth.ProviderGitHub,
			Owner: "acme", Repo: id, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	exp := now.Add(time.Hour)
	tok := func(id string, policies ...string) error {
		return s.CreateToken(ctx, auth.Token{ID: id, Kind: auth.TokenPull, OrgID: "o1", ProjectID: "p1", SecretHash: "h" + id,
			CreatedAt: now, ExpiresAt: exp, PolicyIDs: policies})
	}
	for id, policies := range map[string][]string{"t_a": {"tp_a1"}, "t_ab": {"tp_a1", "tp_b1"}, "t_b": {"tp_b1"}, "t_x": {"tpXa1"}, "t_none": nil} {
		if err := tok(id, policies...); err != nil {
			t.Fatalf("CreateToken(%s): %v", id, err)
		}
	}
	got, err := s.GetTokenByHash(ctx, "ht_ab")
	if err != nil || !slices.Equal(got.PolicyIDs, []string{"tp_a1", "tp_b1"}) || !got.ExpiresAt.Equal(exp) {
		t.Fatalf("GetTokenByHash = %+v, %v; want its policies and expiry", got, err)
	}
	if err := s.CreateBuild(ctx, build.Build{ID: "b_a", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now,
		PolicyIDs: []string{"tp_a1"}, Until: exp}); err != nil {
		t.Fatal(err)
	}
	b, err := s.GetBuild(ctx, "b_a")
	if err != nil || !slices.Equal(b.PolicyIDs, []string{"tp_a1"}) || !b.Until.Equal(exp) {
		t.Fatalf("GetBuild = %+v, %v; want its policies and bound", b, err)
	}
	if ok, err := s.TrustPoliciesExist(ctx, []string{"tp_a1", "tp_b1", "tp_a1"}); !ok || err != nil {
		t.Errorf("TrustPoliciesExist(a1, b1) = %v, %v", ok, err)
	}

	if err := s.RevokeTrustPolicy(ctx, "tp_a1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"t_a", "t_ab"} {
		if _, err := s.GetToken(ctx, id); !errdefs.IsNotFound(err) {
			t.Errorf("token %s recording the removed policy: %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range []string{"t_b", "t_x", "t_none"} {
		if _, err := s.GetToken(ctx, id); err != nil {
			t.Errorf("token %s recording no removed policy: %v", id, err)
		}
	}
	if _, err := s.GetTrustPolicy(ctx, "tp_a1"); !errdefs.IsNotFound(err) {
		t.Errorf("removed policy: %v", err)
	}
	if ok, err := s.TrustPoliciesExist(ctx, []string{"tp_b1", "tp_a1"}); ok || err != nil {
		t.Errorf("TrustPoliciesExist(b1, removed a1) = %v, %v; want false", ok, err)
	}
	if err := s.RevokeTrustPolicy(ctx, "tp_a1"); !errdefs.IsNotFound(err) {
		t.Errorf("RevokeTrustPolicy of a removed policy: %v, want ErrNotFound", err)
	}
	// A job that authenticated before the removal records nothing after it.
	if err := tok("t_late", "tp_a1"); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("CreateToken recording a removed policy: %v, want ErrPermission", err)
	}
	if _, err := s.GetToken(ctx, "t_late"); !errdefs.IsNotFound(err) {
		t.Errorf("a token recording a removed policy was stored: %v", err)
	}
	if err := s.CreateBuild(ctx, build.Build{ID: "b_late", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now,
		PolicyIDs: []string{"tp_b1", "tp_a1"}}); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("CreateBuild recording a removed policy: %v, want ErrPermission", err)
	}
	if err := tok("t_dup", "t_dup_unused"); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("CreateToken recording a policy that never existed: %v, want ErrPermission", err)
	}
	if err := tok("t_a", "tp_b1"); err != nil {
		t.Errorf("CreateToken reusing a deleted token's id: %v", err)
	}
	if err := tok("t_a", "tp_b1"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate token with policies: %v, want ErrAlreadyExists", err)
	}
}
