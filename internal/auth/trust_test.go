package auth_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

type auditLog struct {
	mu     sync.Mutex
	events []string
}

func (l *auditLog) record(_ context.Context, event string, attrs ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, event+" "+fmt.Sprint(attrs...))
}

func (l *auditLog) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == 0 {
		return ""
	}
	return l.events[len(l.events)-1]
}

func TestAuthenticateOIDC(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	iss := oidctest.NewIssuer(t)
	v, err := oidc.NewVerifier(oidc.Config{Audience: "kiln", GitHubIssuer: iss.URL, GitLabIssuer: iss.URL + "/gitlab"})
	if err != nil {
		t.Fatal(err)
	}
	log := &auditLog{}
	a := &auth.Authenticator{Store: st, OIDC: v, Audit: log.record}
	now := time.Now()
	for _, o := range []string{"o", "o2"} {
		st.CreateOrganization(ctx, project.Organization{ID: o, Name: o, CreatedAt: now})
	}
	for i, p := range []string{"p1", "p2", "p3", "p4"} {
		st.CreateProject(ctx, project.Project{ID: p, OrgID: "o", Name: p, CreatedAt: now.Add(time.Duration(i))})
	}
	st.CreateProject(ctx, project.Project{ID: "q1", OrgID: "o2", Name: "q1", CreatedAt: now})
	policy := func(id, project, org, provider, owner, repo string, at int) {
		if err := st.CreateTrustPolicy(ctx, auth.TrustPolicy{ID: id, ProjectID: project, OrgID: org, Provider: provider,
			Owner: owner, Repo: repo, CreatedAt: now.Add(time.Duration(at) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	token := func(repository string) string {
		return oidctest.Sign(t, iss.Key(), oidctest.GitHubClaims(iss.URL, "kiln", repository))
	}

	// No policy yet: a valid token is refused, naming the caller's own
	// repository and nothing else.
	_, err = a.Authenticate(ctx, token("acme/app"))
	if !errors.Is(err, errdefs.ErrPermission) || !strings.Contains(err.Error(), "no trust policy matches GitHub repository acme/app") {
		t.Fatalf("no policy: %v", err)
	}
	if !strings.HasPrefix(log.last(), auth.AuditOIDCDenied) {
		t.Errorf("audit after a denial: %q", log.last())
	}

	policy("tp1", "p1", "o", auth.ProviderGitHub, "acme", "app", 1)      // Depot style: the repository name
	policy("tp2", "p2", "o", auth.ProviderGitHub, "Acme", "acme/App", 2) // owner/repo, other case
	policy("tp3", "p3", "o", auth.ProviderGitHub, "acme", "other", 3)    // another repository
	policy("tp4", "p4", "o", auth.ProviderGitLab, "acme", "acme/app", 4) // another provider
	policy("tp5", "q1", "o2", auth.ProviderGitHub, "acme", "app", 5)     // another organization, newer
	policy("tp6", "p1", "o", auth.ProviderGitHub, "acme", "acme/app", 6) // a second policy of p1

	p, err := a.Authenticate(ctx, token("acme/app"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Kind != auth.TokenOIDC || p.OrgID != "o" || !slices.Equal(p.ProjectIDs, []string{"p1", "p2"}) ||
		p.TokenID != "oidc:github:repo:acme/app:ref:refs/heads/main" {
		t.Errorf("principal = %+v", p)
	}
	for _, proj := range []project.Project{{ID: "p1", OrgID: "o"}, {ID: "p2", OrgID: "o"}} {
		if !p.CanBuild(proj) || p.CanAdminProject(proj) || p.IsOrg() {
			t.Errorf("%s: may build %v, admin %v; want build only", proj.ID, p.CanBuild(proj), p.CanAdminProject(proj))
		}
	}
	for _, proj := range []project.Project{{ID: "p3", OrgID: "o"}, {ID: "p4", OrgID: "o"}, {ID: "q1", OrgID: "o2"}} {
		if p.CanSeeProject(proj) || p.CanBuild(proj) {
			t.Errorf("reaches %s", proj.ID)
		}
	}
	if ev := log.last(); !strings.HasPrefix(ev, auth.AuditTrustPolicyMatched) || !strings.Contains(ev, "p1,p2") || !strings.Contains(ev, "tp1,tp2,tp6") {
		t.Errorf("audit after a match: %q", ev)
	}
	if b := (build.Build{ID: "b", ProjectID: "p1", OrgID: "o"}); !p.CanUseBuild(b) {
		t.Errorf("cannot use a build of its project")
	}
	if b := (build.Build{ID: "b", ProjectID: "p3", OrgID: "o"}); p.CanUseBuild(b) {
		t.Errorf("can use a build of another project")
	}

	// Case does not matter; lookalike repositories do.
	if p, err := a.Authenticate(ctx, token("ACME/app")); err != nil || !slices.Equal(p.ProjectIDs, []string{"p1", "p2"}) {
		t.Errorf("ACME/app: %+v, %v", p, err)
	}
	for _, repo := range []string{"acme/app-2", "acme/ap", "acme-evil/app", "evil/app", "acme/acme/app"} {
		if _, err := a.Authenticate(ctx, token(repo)); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("%s: %v, want ErrPermission", repo, err)
		}
	}

	// GitLab: the same rule, under the namespace.
	gl := func(ns, path string) string {
		return oidctest.Sign(t, iss.Key(), map[string]any{"iss": iss.URL + "/gitlab", "aud": "kiln", "sub": "project_path:" + path,
			"exp": now.Add(time.Minute).Unix(), "namespace_path": ns, "project_path": path})
	}
	if p, err := a.Authenticate(ctx, gl("acme", "acme/app")); err != nil || !slices.Equal(p.ProjectIDs, []string{"p4"}) {
		t.Errorf("gitlab acme/app: %+v, %v", p, err)
	}
	if _, err := a.Authenticate(ctx, gl("acme/sub", "acme/sub/app")); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("gitlab subgroup: %v", err)
	}

	// Invalid tokens are unauthenticated, with the reason.
	expired := oidctest.GitHubClaims(iss.URL, "kiln", "acme/app")
	expired["exp"] = now.Add(-time.Hour).Unix()
	for name, tok := range map[string]string{
		"expired":        oidctest.Sign(t, iss.Key(), expired),
		"wrong audience": oidctest.Sign(t, iss.Key(), oidctest.GitHubClaims(iss.URL, "other", "acme/app")),
		"garbage jwt":    "aaa.bbb.ccc",
	} {
		_, err := a.Authenticate(ctx, tok)
		if !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Errorf("%s: %v, want ErrUnauthenticated", name, err)
		}
		if !strings.HasPrefix(log.last(), auth.AuditOIDCDenied) {
			t.Errorf("%s: audit %q", name, log.last())
		}
	}

	// A deleted policy stops matching on the next request.
	st.DeleteTrustPolicy(ctx, "tp2")
	if p, err := a.Authenticate(ctx, token("acme/app")); err != nil || !slices.Equal(p.ProjectIDs, []string{"p1"}) {
		t.Errorf("after deleting tp2: %+v, %v", p, err)
	}

	// Without a verifier, JWTs are refused; a nil Audit is fine.
	plain := &auth.Authenticator{Store: st}
	if _, err := plain.Authenticate(ctx, token("acme/app")); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("no verifier: %v", err)
	}
}
