package kiln

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/store"
)

// tokens is a fake authenticator: secret → principal.
type tokens map[string]auth.Principal

func (t tokens) Authenticate(_ context.Context, secret string) (auth.Principal, error) {
	if p, ok := t[secret]; ok {
		return p, nil
	}
	return auth.Principal{}, fmt.Errorf("invalid: %w", errdefs.ErrUnauthenticated)
}

func newPage(t *testing.T) (*httptest.Server, *login.Service) {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	logins := login.New(st, login.Config{}, quiet)
	mux := http.NewServeMux()
	(&LoginPage{Logins: logins, Logger: quiet, Authn: tokens{
		"org-secret": {TokenID: "t1", Kind: auth.TokenOrg, OrgID: "o1"},
		"prj-secret": {TokenID: "t2", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"},
	}}).Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, logins
}

func postForm(t *testing.T, u string, body string) (int, string) {
	t.Helper()
	res, err := http.Post(u, "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestLoginPageRefusesBadForms(t *testing.T) {
	srv, logins := newPage(t)
	started, err := logins.Start(context.Background(), "192.0.2.1:40000")
	if err != nil {
		t.Fatal(err)
	}
	u := srv.URL + "/login/" + started.ApprovalID
	cases := []struct {
		name, body string
		status     int
	}{
		{"no decision", "token=org-secret", http.StatusBadRequest},
		{"unknown decision", "token=org-secret&decision=%3Cscript%3E", http.StatusBadRequest},
		{"oversized form", "decision=approve&token=" + strings.Repeat("A", 64<<10), http.StatusBadRequest},
		{"malformed encoding", "decision=approve&token=%zz", http.StatusBadRequest},
		{"no token", "decision=approve", http.StatusUnauthorized},
		{"hostile token", "decision=approve&token=" + url.QueryEscape(`"><script>alert(1)</script>`), http.StatusUnauthorized},
		{"project token", "decision=approve&token=prj-secret", http.StatusForbidden},
	}
	for _, tc := range cases {
		status, body := postForm(t, u, tc.body)
		if status != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, status, tc.status)
		}
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "AAAAAAAA") || strings.Contains(body, "secret") {
			t.Errorf("%s: the response reflects the submitted form:\n%s", tc.name, body)
		}
	}
	if info, _ := logins.Lookup(context.Background(), started.ApprovalID); info.Status != login.StatusPending {
		t.Fatalf("refused forms changed the login: %+v", info)
	}
	if status, body := postForm(t, u, "decision=deny&token=org-secret"); status != http.StatusOK || !strings.Contains(body, "Denied") {
		t.Errorf("deny: %d\n%s", status, body)
	}
	if status, _ := postForm(t, u, "decision=approve&token=org-secret"); status != http.StatusConflict {
		t.Errorf("approve after deny: %d, want 409", status)
	}
	if status, _ := postForm(t, srv.URL+"/login/nosuchlogin", "decision=approve&token=org-secret"); status != http.StatusNotFound {
		t.Errorf("POST to an unknown login: %d, want 404", status)
	}
}

func TestApprovalIDFromURL(t *testing.T) {
	for in, want := range map[string]string{
		"abcd":                            "abcd",
		"  abcd\n":                        "abcd",
		"https://kiln.example/login/abcd": "abcd",
		"http://h:1/x/login/abcd":         "abcd",
		"/login/abcd":                     "/login/abcd", // not a URL: passed on, refused as malformed
	} {
		if got := approvalID(in); got != want {
			t.Errorf("approvalID(%q) = %q, want %q", in, got, want)
		}
	}
}
