package registry

import (
	"bytes"
	"io/fs"
	"mime/multipart"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/auth"
)

// An attacker holding p1's project token tries to reach p2's blobs,
// manifests and tags through parameters in a form body, which distribution
// reads with r.FormValue (body values win over the query's).
func TestFormBodyParametersFromTheAttackersSide(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	attacker := basic(f.token(auth.TokenProject, "o1", "p1"))
	secretImg, secretBlobs := f.image(org, "p2/secret", "v1", "p2's secret")
	layer := secretBlobs[1].Digest.String()
	_, ownBlobs := f.image(attacker, "p1/app", "v1", "p1's own")
	ownLayer := ownBlobs[1].Digest.String()

	form := func(kv ...string) []byte {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return []byte(v.Encode())
	}
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("mount", layer)
	mw.WriteField("from", "p2/secret")
	mw.Close()

	upload := "/v2/p1/app/blobs/uploads/"
	// A real upload session of p1's, to finish with a digest in a form.
	res := f.do("POST", upload, attacker, nil)
	res.Body.Close()
	session := f.location(res).String()
	cases := []struct {
		name, method, path, ct string
		body                   []byte
	}{
		{"mount and from in the body", "POST", upload, "application/x-www-form-urlencoded", form("mount", layer, "from", "p2/secret")},
		{"from in the body overrides the query's", "POST", upload + "?mount=" + layer + "&from=p1/app", "application/x-www-form-urlencoded", form("from", "p2/secret")},
		{"from in the body, mount in the query", "POST", upload + "?mount=" + layer, "application/x-www-form-urlencoded", form("from", "p2/secret")},
		{"mount in the body without from", "POST", upload, "application/x-www-form-urlencoded", form("mount", layer)},
		{"media type in capitals with parameters", "POST", upload, "Application/X-WWW-Form-Urlencoded; charset=utf-8", form("mount", layer, "from", "p2/secret")},
		{"multipart form", "POST", upload, mw.FormDataContentType(), mp.Bytes()},
		{"push: digest in the body", "PUT", session, "application/x-www-form-urlencoded", form("digest", digest.FromString("digest=x").String())},
		{"push: chunk as a form", "PATCH", session, "application/x-www-form-urlencoded", form("a", "b")},
		{"push: manifest as a form", "PUT", "/v2/p1/app/manifests/v2", "application/x-www-form-urlencoded", form("x", "y")},
		{"delete another project's manifest", "DELETE", "/v2/p2/secret/manifests/" + secretImg.Digest.String(), "application/x-www-form-urlencoded", form("x", "y")},
		{"delete own manifest", "DELETE", "/v2/p1/app/manifests/v1", "multipart/form-data; boundary=x", []byte("--x--\r\n")},
		{"list another project's tags", "GET", "/v2/p2/secret/tags/list", "application/x-www-form-urlencoded", form("n", "1")},
		{"list own tags", "GET", "/v2/p1/app/tags/list", "multipart/form-data; boundary=x", []byte("--x--\r\n")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := f.do(c.method, c.path, attacker, c.body, "Content-Type", c.ct)
			msg := readAll(res)
			if res.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(msg, "UNSUPPORTED") || !strings.Contains(msg, "form-encoded body") {
				t.Errorf("%s %s: HTTP %d %s; want 415 UNSUPPORTED naming the form body", c.method, c.path, res.StatusCode, msg)
			}
			if res.Header.Get("Docker-Content-Digest") != "" {
				t.Errorf("answered with a digest: a mount happened")
			}
		})
	}

	// Through the query, with and without from: no mount from p2, an
	// upload session like for a blob p2 does not have.
	for _, q := range []string{"?mount=" + layer + "&from=p2/secret", "?mount=" + layer, "?mount=" + layer + "&from=p1/app", "?from=p2/secret"} {
		res := f.do("POST", upload+q, attacker, nil)
		res.Body.Close()
		if res.StatusCode != http.StatusAccepted || res.Header.Get("Docker-Content-Digest") != "" {
			t.Errorf("POST %s: HTTP %d digest %q; want 202 and no mount", q, res.StatusCode, res.Header.Get("Docker-Content-Digest"))
		}
	}
	if got := f.status("GET", "/v2/p1/app/blobs/"+layer, attacker); got != http.StatusNotFound {
		t.Errorf("p2's layer in p1 after the attempts: HTTP %d, want 404", got)
	}
	// A mount p1 may make still works: it is the query that decides.
	res = f.do("POST", "/v2/p1/other/blobs/uploads/?mount="+ownLayer+"&from=p1/app", attacker, nil)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated || res.Header.Get("Docker-Content-Digest") != ownLayer {
		t.Errorf("mount within p1: HTTP %d %q, want 201", res.StatusCode, res.Header.Get("Docker-Content-Digest"))
	}

	// p2 is untouched and the registry still serves.
	for _, p := range []string{"/v2/p2/secret/manifests/v1", "/v2/p2/secret/blobs/" + layer} {
		if got := f.status("GET", p, org); got != http.StatusOK {
			t.Errorf("GET %s after the attack: HTTP %d", p, got)
		}
	}
	if got := f.status("GET", "/v2/p1/app/manifests/v1", attacker); got != http.StatusOK {
		t.Errorf("p1's own manifest after the attack: HTTP %d", got)
	}
}

func readAll(res *http.Response) string {
	defer res.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(res.Body)
	return b.String()
}

// What the registry writes (content, upload sessions, keys) is its
// owner's only, although distribution creates files 0666 and
// directories 0777 less the umask.
func TestStorageOwnerOnly(t *testing.T) {
	var dir string
	f := newFixture(t, func(c *Config) { dir = c.Dir })
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	f.image(org, "p1/app", "v1", "content")
	res := f.do("POST", "/v2/p1/app/blobs/uploads/", org, nil) // a session left open
	res.Body.Close()
	files := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files++
		}
		if want := fs.FileMode(0o600); d.IsDir() && fi.Mode().Perm() != 0o700 || !d.IsDir() && fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v", strings.TrimPrefix(p, dir), fi.Mode().Perm())
		}
		return nil
	})
	if files < 8 {
		t.Errorf("only %d files under the registry's directory; the walk missed the content", files)
	}
}
