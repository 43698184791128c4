package buildreq

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseGitURL(t *testing.T) {
	for _, c := range []struct {
		in               string
		remote, ref, sub string
		host             string
	}{
		{"https://example.com/org/repo.git", "https://example.com/org/repo.git", "", "", "example.com"},
		{"https://example.com/org/repo.git#v1.2:app/web", "https://example.com/org/repo.git", "v1.2", "app/web", "example.com"},
		{"http://127.0.0.1:8080/r.git#:sub", "http://127.0.0.1:8080/r.git", "", "sub", "127.0.0.1:8080"},
		{"git@github.com:org/repo.git#main", "git@github.com:org/repo.git", "main", "", "github.com"},
		{"ssh://git@example.com/org/repo.git#feature/x", "ssh://git@example.com/org/repo.git", "feature/x", "", "example.com"},
	} {
		g, err := ParseGitURL(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if g.Remote != c.remote || g.Ref != c.ref || g.SubDir != c.sub || g.Host != c.host {
			t.Errorf("%s = %+v", c.in, g)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"", "empty"},
		{"file:///srv/repo.git", "not supported"},
		{"/srv/repo.git", "not a git URL"},
		{"./repo", "not a git URL"},
		{"-uhttps://x/r.git", `cannot start with "-"`},
		{"https://x/r.git#--upload-pack=sh", `cannot start with "-"`},
		{"https://x/r.git#a..b", "not a valid"},
		{"https://x/r.git#main:../../etc", "leaves the repository"},
		{"https://u:p@x/r.git", "credentials do not belong"},
		{"https://x/archive.tar.gz", "ends in .git"},
		{"https://x/r .git", "space"},
		{"https://x/" + strings.Repeat("a", 3000) + ".git", "at most"},
	} {
		if _, err := ParseGitURL(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60q: err %v; want %q", c.in, err, c.want)
		}
	}
}

func TestParseFlagsGitContext(t *testing.T) {
	r, err := ParseFlags(Flags{ContextPath: "https://example.com/r.git#main:app", Dockerfile: "docker/Dockerfile"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Context.Git != "https://example.com/r.git#main:app" || r.Context.Dir != "" || r.Dockerfile.Path != "docker/Dockerfile" {
		t.Errorf("request = %+v", r)
	}
	if err := r.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if _, err := ParseFlags(Flags{ContextPath: "https://example.com/r.git", Dockerfile: "/abs/Dockerfile"}); err == nil {
		t.Error("an absolute -f with a git context was accepted")
	}
	if _, err := ParseFlags(Flags{ContextPath: "file:///r.git"}); err == nil {
		t.Error("a file:// context was accepted")
	}
}

// A named context that is a git URL gets the same checks.
func TestNamedContextGitURL(t *testing.T) {
	if _, err := NamedContextOf("https://example.com/r.git#main:lib"); err != nil {
		t.Errorf("git named context: %v", err)
	}
	if _, err := NamedContextOf("https://example.com/files/base.tar.gz"); err != nil {
		t.Errorf("http named context: %v", err)
	}
	if _, err := NamedContextOf("https://example.com/r.git#--upload-pack=sh"); err == nil || !strings.Contains(err.Error(), "cannot start with") {
		t.Errorf("option-like ref in a named context: %v", err)
	}
}

// No error quotes a password, whatever else is wrong with the URL, and a
// long URL is cut on a character boundary.
func TestParseGitURLNeverQuotesCredentials(t *testing.T) {
	for _, v := range []string{
		"https://u:TOKEN123@host/r.git x",          // a space
		"ftp://u:TOKEN123@host/r.git",              // a scheme
		"https://u:TOKEN123@host:badport/r.git",    // url.Parse fails
		"https://u:TOKEN123@host/r.git#-oops",      // a ref option
		"https://u:TOKEN123@host/archive.tar.gz",   // not git
		"https://u:TOKEN123@host/r.git#main:../..", // a subdir
	} {
		_, err := ParseGitURL(v)
		if err == nil {
			t.Errorf("%q accepted", v)
			continue
		}
		if strings.Contains(err.Error(), "TOKEN123") {
			t.Errorf("%q: error quotes the password: %v", v, err)
		}
	}
	long := "https://host/" + strings.Repeat("é", 150) + ".git x"
	_, err := ParseGitURL(long)
	if err == nil || !utf8.ValidString(err.Error()) {
		t.Errorf("long URL: %v (valid UTF-8: %v)", err, err != nil && utf8.ValidString(err.Error()))
	}
}
