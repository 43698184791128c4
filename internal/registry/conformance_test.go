package registry

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/auth"
)

// A manifest named by an invalid tag (the official suite pulls
// ".INVALID_MANIFEST_NAME") is not there: reads and deletes answer 404
// MANIFEST_UNKNOWN once the caller is authorized; a push to it is 400
// TAG_INVALID.
func TestInvalidTagIsUnknownToReadsAndRefusedToPushes(t *testing.T) {
	f := newFixture(t)
	authz := basic(f.token(auth.TokenOrg, "o1", ""))
	path := "/v2/p1/app/manifests/.INVALID_MANIFEST_NAME"
	for _, m := range []string{"GET", "DELETE"} {
		if res := f.do(m, path, authz, nil); res.StatusCode != http.StatusNotFound || ociCode(t, res) != "MANIFEST_UNKNOWN" {
			t.Errorf("%s %s: %d", m, path, res.StatusCode)
		}
	}
	if got := f.status("HEAD", path, authz); got != http.StatusNotFound {
		t.Errorf("HEAD %s: %d, want 404", path, got)
	}
	cfg := f.pushBlob(authz, "p1/app", []byte(`{}`), v1.MediaTypeImageConfig)
	body := manifest(cfg, []v1.Descriptor{}, "", nil, nil)
	for _, tag := range []string{".INVALID_MANIFEST_NAME", "-bad", strings.Repeat("t", 129)} {
		res := f.do("PUT", "/v2/p1/app/manifests/"+tag, authz, body, "Content-Type", v1.MediaTypeImageManifest)
		if res.StatusCode != http.StatusBadRequest || ociCode(t, res) != "TAG_INVALID" {
			t.Errorf("PUT to tag %q: %d", tag, res.StatusCode)
		}
	}
	// Who may not read the repository learns nothing new: anonymous is
	// challenged, another organization is denied, as for any manifest.
	if res := f.do("GET", path, "", nil); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous GET: %d, want 401", res.StatusCode)
	}
	other := basic(f.token(auth.TokenOrg, "o2", ""))
	if res := f.do("GET", path, other, nil); res.StatusCode != http.StatusForbidden || ociCode(t, res) != "DENIED" {
		t.Errorf("other org's GET: %d, want 403", res.StatusCode)
	}
}

// Docker-Distribution-Api-Version is on every answer exactly once:
// kiln's own (401s, catalog, referrers) and distribution's.
func TestAPIVersionHeaderOnce(t *testing.T) {
	f := newFixture(t)
	authz := basic(f.token(auth.TokenOrg, "o1", ""))
	d := f.pushBlob(authz, "p1/app", []byte("blob"), v1.MediaTypeImageLayer).Digest
	for _, c := range []struct{ method, path, authz string }{
		{"GET", "/v2/", ""},
		{"GET", "/v2/", authz},
		{"GET", "/v2/_catalog", authz},
		{"GET", "/v2/p1/app/tags/list", authz},
		{"GET", "/v2/p1/app/manifests/latest", authz},
		{"HEAD", "/v2/p1/app/manifests/latest", authz},
		{"GET", "/v2/p1/app/blobs/" + d.String(), authz},
		{"HEAD", "/v2/p1/app/blobs/" + d.String(), authz},
		{"GET", "/v2/p1/app/referrers/" + d.String(), authz},
		{"POST", "/v2/p1/app/blobs/uploads/", authz},
		{"GET", "/v2/p1/app/manifests/.INVALID_MANIFEST_NAME", authz},
		{"GET", "/v2/P1/tags/list", authz},
	} {
		res := f.do(c.method, c.path, c.authz, nil)
		res.Body.Close()
		if got := res.Header.Values("Docker-Distribution-Api-Version"); len(got) != 1 || got[0] != "registry/2.0" {
			t.Errorf("%s %s (auth %v): %d, Docker-Distribution-Api-Version %q", c.method, c.path, c.authz != "", res.StatusCode, got)
		}
	}
}

func (f *fixture) catalog(authz string) []string {
	f.t.Helper()
	res := f.do("GET", "/v2/_catalog", authz, nil)
	if res.StatusCode != http.StatusOK {
		f.t.Fatalf("catalog: %d", res.StatusCode)
	}
	var c struct{ Repositories []string }
	mustJSON(f.t, res, &c)
	return c.Repositories
}

// The catalog lists repositories with content — a manifest or a blob —
// that the caller may pull: not one where an upload was only opened, not
// one whose content was deleted, not another project's.
func TestCatalogListsRepositoriesWithContent(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	p1 := basic(f.token(auth.TokenProject, "o1", "p1"))

	res := f.do("POST", "/v2/p1/opened/blobs/uploads/", p1, nil)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("open upload: %d", res.StatusCode)
	}
	blob := f.pushBlob(p1, "p1/blobs", []byte("only a blob"), v1.MediaTypeImageLayer)
	m, _ := f.image(p1, "p1/app", "v1", "app")
	f.image(org, "p2/other", "v1", "other")
	if got, want := f.catalog(p1), []string{"p1/app", "p1/blobs"}; !slices.Equal(got, want) {
		t.Errorf("p1's catalog = %v, want %v", got, want)
	}
	if got, want := f.catalog(org), []string{"p1/app", "p1/blobs", "p2/other"}; !slices.Equal(got, want) {
		t.Errorf("the org's catalog = %v, want %v", got, want)
	}

	// Deleting the content empties the repository out of the catalog.
	for _, p := range []string{"/v2/p1/blobs/blobs/" + blob.Digest.String(), "/v2/p1/app/manifests/" + m.Digest.String()} {
		if res := f.do("DELETE", p, p1, nil); res.StatusCode != http.StatusAccepted {
			t.Fatalf("DELETE %s: %d", p, res.StatusCode)
		}
	}
	got := f.catalog(p1)
	if slices.Contains(got, "p1/blobs") {
		t.Errorf("catalog after the only blob was deleted = %v", got)
	}
}

// A single POST with ?digest= and the blob as its body stores the blob:
// 201 with its Location and Docker-Content-Digest. A body that does not
// match, a malformed digest, and a body without a digest are refused and
// store nothing.
func TestSingleRequestUpload(t *testing.T) {
	f := newFixture(t)
	authz := basic(f.token(auth.TokenProject, "o1", "p1"))
	blob := []byte("a blob sent whole with the POST")
	d := digest.FromBytes(blob)
	res := f.do("POST", "/v2/p1/mono/blobs/uploads/?digest="+d.String(), authz, blob, "Content-Type", "application/octet-stream")
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("POST ?digest=: %d, want 201", res.StatusCode)
	}
	if loc := res.Header.Get("Location"); !strings.HasSuffix(loc, "/v2/p1/mono/blobs/"+d.String()) {
		t.Errorf("Location %q", loc)
	}
	if got := res.Header.Get("Docker-Content-Digest"); got != d.String() {
		t.Errorf("Docker-Content-Digest %q", got)
	}
	res = f.do("GET", "/v2/p1/mono/blobs/"+d.String(), authz, nil)
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(got) != string(blob) {
		t.Errorf("GET the blob: %d %q", res.StatusCode, got)
	}
	// The empty blob too.
	empty := digest.FromBytes(nil)
	if res := f.do("POST", "/v2/p1/mono/blobs/uploads/?digest="+empty.String(), authz, nil); res.StatusCode != http.StatusCreated {
		t.Errorf("empty blob: %d", res.StatusCode)
	}

	wrong := digest.FromString("something else")
	res = f.do("POST", "/v2/p1/bad/blobs/uploads/?digest="+wrong.String(), authz, blob, "Content-Type", "application/octet-stream")
	if res.StatusCode != http.StatusBadRequest || ociCode(t, res) != "DIGEST_INVALID" {
		t.Errorf("mismatched digest: %d", res.StatusCode)
	}
	for _, dg := range []digest.Digest{wrong, d} {
		if got := f.status("HEAD", "/v2/p1/bad/blobs/"+dg.String(), authz); got != http.StatusNotFound {
			t.Errorf("after a refused upload, HEAD %s: %d", dg, got)
		}
	}
	for _, q := range []string{"?digest=", "?digest=sha256:xyz", "?digest=md5:" + strings.Repeat("a", 32), "?digest=" + strings.Repeat("x", 4000)} {
		res := f.do("POST", "/v2/p1/bad/blobs/uploads/"+q, authz, blob, "Content-Type", "application/octet-stream")
		if res.StatusCode != http.StatusBadRequest || ociCode(t, res) != "DIGEST_INVALID" {
			t.Errorf("POST %.40s: %d", q, res.StatusCode)
		}
	}
	res = f.do("POST", "/v2/p1/bad/blobs/uploads/", authz, blob, "Content-Type", "application/octet-stream")
	if res.StatusCode != http.StatusBadRequest || ociCode(t, res) != "DIGEST_INVALID" {
		t.Errorf("body without digest: %d", res.StatusCode)
	}
	if uploads, err := f.reg.driver.List(context.Background(), repoPath("p1/bad", "_uploads")); err == nil && len(uploads) > 0 {
		t.Errorf("refused uploads left sessions: %v", uploads)
	}
	if got := f.catalog(authz); slices.Contains(got, "p1/bad") {
		t.Errorf("catalog lists the repository of refused uploads: %v", got)
	}
}

// A single-request upload whose Content-Length is more than the storage
// has free is refused before the body is read, and the registry goes on
// serving.
func TestHugeContentLengthRefusedUpFront(t *testing.T) {
	f := newFixture(t)
	authz := basic(f.token(auth.TokenProject, "o1", "p1"))
	d := digest.FromString("x")
	for _, c := range []struct{ method, target string }{
		{"POST", "/v2/p1/big/blobs/uploads/?digest=" + d.String()},
	} {
		conn, err := net.Dial("tcp", f.host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\nonly a few bytes",
			c.method, c.target, f.host, authz, int64(1)<<60)
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.method, err)
		}
		if res.StatusCode != http.StatusInsufficientStorage || ociCode(t, res) != "UNKNOWN" {
			t.Errorf("%s with Content-Length 2^60: %d", c.method, res.StatusCode)
		}
		conn.Close()
	}
	f.pushBlob(authz, "p1/big", []byte("still serving"), v1.MediaTypeImageLayer)
}

// A mount whose source the caller may read, asked with a registry token
// that covers only the target, is challenged for both scopes; with a token
// for both, the blob is mounted. A source the caller may not read is
// still not mounted, and not challenged.
func TestMountChallengesForTheSourceScope(t *testing.T) {
	f := newFixture(t)
	secret := f.token(auth.TokenProject, "o1", "p1")
	blob := f.pushBlob(basic(secret), "p1/src", []byte("mount me"), v1.MediaTypeImageLayer)
	mount := "/v2/p1/app/blobs/uploads/?mount=" + blob.Digest.String() + "&from=p1/src"

	only := f.fetchToken(secret, "repository:p1/app:pull,push")
	res := f.do("POST", mount, "Bearer "+only, nil)
	res.Body.Close()
	challenge := res.Header.Get("WWW-Authenticate")
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(challenge, `error="insufficient_scope"`) ||
		!strings.Contains(challenge, `scope="repository:p1/app:pull,push repository:p1/src:pull"`) {
		t.Fatalf("mount with a target-only token: %d %s", res.StatusCode, challenge)
	}
	// One scope value holding both, space-separated, as the challenge says.
	both := f.fetchToken(secret, "repository:p1/app:pull,push%20repository:p1/src:pull")
	res = f.do("POST", mount, "Bearer "+both, nil)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Errorf("mount with a token for both: %d, want 201", res.StatusCode)
	}

	// Another organization's blob: no challenge (it would say the caller
	// could read it), no mount: an upload session.
	theirs := f.pushBlob(basic(f.token(auth.TokenOrg, "o2", "")), "q1/src", []byte("theirs"), v1.MediaTypeImageLayer)
	res = f.do("POST", "/v2/p1/app/blobs/uploads/?mount="+theirs.Digest.String()+"&from=q1/src", "Bearer "+both, nil)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Errorf("mount from another organization: %d, want 202", res.StatusCode)
	}
}

// A blob pushed by its sha512 digest is verified, stored and served, and
// every answer about it names the digest the client used.
func TestSHA512BlobAnswersNameTheClientsDigest(t *testing.T) {
	f := newFixture(t)
	authz := basic(f.token(auth.TokenProject, "o1", "p1"))
	blob := []byte("content addressed by sha512")
	d := digest.SHA512.FromBytes(blob)
	check := func(what string, res *http.Response, want int) {
		t.Helper()
		res.Body.Close()
		if res.StatusCode != want || res.Header.Get("Docker-Content-Digest") != d.String() {
			t.Errorf("%s: %d, Docker-Content-Digest %q; want %d and %s", what, res.StatusCode, res.Header.Get("Docker-Content-Digest"), want, d)
		}
	}
	res := f.do("POST", "/v2/p1/src/blobs/uploads/", authz, nil)
	res.Body.Close()
	check("session PUT", f.do("PUT", withDigest(f.location(res), d), authz, blob, "Content-Type", "application/octet-stream"), http.StatusCreated)
	check("GET", f.do("GET", "/v2/p1/src/blobs/"+d.String(), authz, nil), http.StatusOK)
	check("HEAD", f.do("HEAD", "/v2/p1/src/blobs/"+d.String(), authz, nil), http.StatusOK)
	check("single-request upload", f.do("POST", "/v2/p1/mono/blobs/uploads/?digest="+d.String(), authz, blob, "Content-Type", "application/octet-stream"), http.StatusCreated)
	// Content that does not hash to it is still refused.
	res = f.do("POST", "/v2/p1/bad/blobs/uploads/?digest="+d.String(), authz, []byte("other"), "Content-Type", "application/octet-stream")
	if res.StatusCode != http.StatusBadRequest || ociCode(t, res) != "DIGEST_INVALID" {
		t.Errorf("mismatched sha512 upload: %d", res.StatusCode)
	}
}

func withDigest(u *url.URL, d digest.Digest) string {
	q := u.Query()
	q.Set("digest", d.String())
	return u.Path + "?" + q.Encode()
}
