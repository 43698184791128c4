package registry

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// jobAuthn plays the OIDC verifier: secret "job" is a CI job admitted by
// policy tp1 into p1 whose token expires at exp.
type jobAuthn struct{ exp time.Time }

func (a jobAuthn) Authenticate(_ context.Context, secret string) (auth.Principal, error) {
	if secret != "job" {
		return auth.Principal{}, errdefs.ErrUnauthenticated
	}
	return auth.Principal{TokenID: "oidc:github:repo:acme/app", Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1"},
		PolicyIDs: []string{"tp1"}, ExpiresAt: a.exp}, nil
}

// A CI job's registry token expires with the job's token (no leeway) and
// is refused once the trust policy that admitted the job is removed.
func TestJobRegistryTokenEndsWithTheJob(t *testing.T) {
	exp := time.Now().Add(2 * time.Minute)
	f := newFixture(t, func(c *Config) { c.Authn = jobAuthn{exp: exp} })
	ctx := context.Background()
	if err := f.st.CreateTrustPolicy(ctx, auth.TrustPolicy{ID: "tp1", ProjectID: "p1", OrgID: "o1", Provider: auth.ProviderGitHub,
		Owner: "acme", Repo: "app", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	fetch := func() (string, int, int) {
		t.Helper()
		res := f.do("GET", "/v2/token?service=kiln&scope=repository:p1/app:pull,push", basic("job"), nil)
		defer res.Body.Close()
		var body struct {
			Token     string `json:"token"`
			ExpiresIn int    `json:"expires_in"`
		}
		b, _ := io.ReadAll(res.Body)
		json.Unmarshal(b, &body)
		return body.Token, body.ExpiresIn, res.StatusCode
	}
	pushes := func(tok string) int {
		t.Helper()
		res := f.do("POST", "/v2/p1/app/blobs/uploads/", "Bearer "+tok, nil)
		res.Body.Close()
		return res.StatusCode
	}
	tok, in, code := fetch()
	if code != http.StatusOK || in > 120 || in < 100 {
		t.Fatalf("token endpoint for the job: %d, expires_in %d; want 200 and the job's remaining ~120 s, not %v", code, in, tokenTTL)
	}
	if c := pushes(tok); c != http.StatusAccepted {
		t.Fatalf("control: the job's registry token starts no push: %d", c)
	}
	// One second past the job's exp: inside the JWT leeway, still refused.
	f.clock.advance(time.Until(exp) + time.Second)
	if c := pushes(tok); c != http.StatusUnauthorized {
		t.Errorf("the job's registry token after the job's token expired: %d, want 401", c)
	}
	if _, _, code := fetch(); code != http.StatusUnauthorized {
		t.Errorf("token endpoint for an expired job (inside the verifier's skew): %d, want 401", code)
	}

	f.clock.advance(-(time.Until(exp) + time.Second))
	tok, _, _ = fetch()
	if c := pushes(tok); c != http.StatusAccepted {
		t.Fatalf("control: %d", c)
	}
	if err := f.st.RevokeTrustPolicy(ctx, "tp1"); err != nil {
		t.Fatal(err)
	}
	if c := pushes(tok); c != http.StatusUnauthorized {
		t.Errorf("the job's registry token after its trust policy was removed: %d, want 401", c)
	}
}
