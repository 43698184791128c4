package server

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
)

// The dashboard is mounted on the API's listener: / is the sign-in page,
// and /builds/{id} sends a browser to sign in, then serves it the page,
// scoped as its token (another project's build is 404).
func TestDashboardMounted(t *testing.T) {
	a := startAttackServer(t)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", a.url+path, nil)
		req.Header.Set("Accept", "text/html")
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	if res := get("/"); res.StatusCode != 200 || !strings.Contains(res.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("GET /: %d, CSP %q", res.StatusCode, res.Header.Get("Content-Security-Policy"))
	}
	if res := get("/builds/b2"); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/sign-in?next=%2Fbuilds%2Fb2" {
		t.Fatalf("GET /builds/b2 signed out: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	req, _ := http.NewRequest("POST", a.url+"/sign-in", strings.NewReader(url.Values{"token": {a.p1Tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", a.url)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/projects/p1" {
		t.Fatalf("sign in: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	if res := get("/projects/p1"); res.StatusCode != 200 {
		t.Errorf("own project: %d", res.StatusCode)
	}
	for _, path := range []string{"/builds/b2", "/builds/b3", "/projects/p2"} {
		if res := get(path); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s with p1's session: %d, want 404", path, res.StatusCode)
		}
	}

	// A share link: the dashboard's read-only page for a browser with no
	// session, the JSON summary for an API caller; 404 once revoked.
	link, err := a.s.builds.Share(t.Context(), a.admin, "b2")
	if err != nil {
		t.Fatal(err)
	}
	link = strings.TrimPrefix(link, a.url)
	for accept, want := range map[string]string{"text/html": `id="waterfall"`, "application/json": `"build_id": "b2"`} {
		req, _ := http.NewRequest("GET", a.url+link, nil)
		req.Header.Set("Accept", accept)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(body), want) || res.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("GET %s (Accept %s): %d, Referrer-Policy %q\n%s", link, accept, res.StatusCode, res.Header.Get("Referrer-Policy"), body)
		}
	}
	if err := a.s.builds.StopSharing(t.Context(), a.admin, "b2"); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{link, link + "/live"} {
		res, err := http.Get(a.url + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s revoked: %d, want 404", path, res.StatusCode)
		}
	}
}
