package e2e

// kiln's registry against the OCI distribution spec's conformance
// workflows (pull, push, content discovery, content management), written
// from the spec's text, plus what kiln adds: per-project scoping seen from
// an attacker's side, retention and garbage collection under a running
// push, bad input, and real clients (go-containerregistry, the Docker CLI,
// BuildKit) authenticating with no special flags.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
)

// ociClient speaks the registry API to kiln serve with one credential.
type ociClient struct {
	t    *testing.T
	base string
	auth string // the Authorization header; "" for anonymous
}

// oci is a client authenticating with token as Basic x-token:<token>.
func (s *server) oci(t *testing.T, token string) *ociClient {
	c := &ociClient{t: t, base: s.URL}
	if token != "" {
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte("x-token:"+token))
	}
	return c
}

var ociHTTP = &http.Client{Timeout: 60 * time.Second}

const ociAccept = v1.MediaTypeImageManifest + ", " + v1.MediaTypeImageIndex +
	", application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// do sends a request (path relative to the server, or a Location) with
// header pairs; the caller closes the body.
func (c *ociClient) do(method, path string, body []byte, hdr ...string) *http.Response {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	req.Header.Set("Accept", ociAccept)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := ociHTTP.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

// expect sends a request, checks its status and returns the body.
func (c *ociClient) expect(want int, method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	c.t.Helper()
	res := c.do(method, path, body, hdr...)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		c.t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, res.StatusCode, want, tail(string(b), 500))
	}
	return res, b
}

// expectError sends a request and checks the status and OCI error code.
func (c *ociClient) expectError(status int, code, method, path string, body []byte, hdr ...string) *http.Response {
	c.t.Helper()
	res := c.do(method, path, body, hdr...)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	json.Unmarshal(b, &e)
	got := ""
	if len(e.Errors) > 0 {
		got = e.Errors[0].Code
	}
	if res.StatusCode != status || (method != "HEAD" && got != code) {
		c.t.Errorf("%s %s: HTTP %d %q, want %d %s (body %s)", method, path, res.StatusCode, got, status, code, tail(string(b), 300))
	}
	return res
}

// location reads a response's Location as a path (with query) on c.base.
func (c *ociClient) location(res *http.Response) string {
	c.t.Helper()
	u, err := url.Parse(res.Header.Get("Location"))
	if err != nil || u.Path == "" {
		c.t.Fatalf("bad Location %q", res.Header.Get("Location"))
	}
	if u.RawQuery != "" {
		return u.Path + "?" + u.RawQuery
	}
	return u.Path
}

// withDigest adds ?digest= (or &digest=) to a location.
func withDigest(loc string, d digest.Digest) string {
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return loc + sep + "digest=" + url.QueryEscape(d.String())
}

// pushBlob uploads content monolithically (POST, then PUT with the body).
func (c *ociClient) pushBlob(repo string, content []byte, mediaType string) v1.Descriptor {
	c.t.Helper()
	res, _ := c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	d := digest.FromBytes(content)
	c.expect(http.StatusCreated, "PUT", withDigest(c.location(res), d), content, "Content-Type", "application/octet-stream")
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(content))}
}

func ociManifest(config v1.Descriptor, layers []v1.Descriptor, artifactType string, subject *v1.Descriptor) []byte {
	m := map[string]any{"schemaVersion": 2, "mediaType": v1.MediaTypeImageManifest, "config": config, "layers": layers}
	if artifactType != "" {
		m["artifactType"] = artifactType
	}
	if subject != nil {
		m["subject"] = subject
	}
	b, _ := json.Marshal(m)
	return b
}

// pushImage pushes a config, one layer and a manifest at ref.
func (c *ociClient) pushImage(repo, ref, content string) (v1.Descriptor, []v1.Descriptor) {
	c.t.Helper()
	cfg := c.pushBlob(repo, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"comment":"`+content+`"}`), v1.MediaTypeImageConfig)
	layer := c.pushBlob(repo, []byte("layer: "+content), v1.MediaTypeImageLayerGzip)
	body := ociManifest(cfg, []v1.Descriptor{layer}, "", nil)
	c.expect(http.StatusCreated, "PUT", "/v2/"+repo+"/manifests/"+ref, body, "Content-Type", v1.MediaTypeImageManifest)
	return v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))}, []v1.Descriptor{cfg, layer}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestRegistryConformance(t *testing.T) {
	t.Parallel()
	registryConformance(t, startServer(t))
}

// registryConformance runs the spec's workflows against s's registry in a
// new project (the fault suite runs them again on a server that survived
// its faults).
func registryConformance(t *testing.T, s *server) {
	proj := s.createProject(t, "oci")
	c := s.oci(t, s.Token)
	repo := proj + "/conformance"

	// The version check: 200 with the API version header to a client with
	// credentials.
	res, _ := c.expect(200, "GET", "/v2/", nil)
	if res.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("/v2/ API version header: %v", res.Header)
	}

	var pushed struct {
		manifest v1.Descriptor
		body     []byte
		blobs    []v1.Descriptor
		content  map[digest.Digest][]byte
	}
	pushed.content = map[digest.Digest][]byte{}

	t.Run("push", func(t *testing.T) {
		c := s.oci(t, s.Token)
		// Monolithic: POST opens a session, PUT ?digest= carries the blob.
		cfgBytes := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
		res, _ := c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
		if res.Header.Get("Location") == "" {
			t.Fatal("POST upload: no Location")
		}
		cfg := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}
		res, _ = c.expect(http.StatusCreated, "PUT", withDigest(c.location(res), cfg.Digest), cfgBytes,
			"Content-Type", "application/octet-stream", "Content-Length", strconv.Itoa(len(cfgBytes)))
		if res.Header.Get("Location") == "" || res.Header.Get("Docker-Content-Digest") != cfg.Digest.String() {
			t.Errorf("blob PUT headers: %v", res.Header)
		}
		pushed.content[cfg.Digest] = cfgBytes

		// A single POST with ?digest= and the body stores the blob (kiln
		// takes it; the spec also allows answering with a session).
		mono := randomBytes(2048)
		md := digest.FromBytes(mono)
		c.expect(http.StatusCreated, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+md.String(), mono, "Content-Type", "application/octet-stream")
		pushed.content[md] = mono

		// Chunked: PATCHes with Content-Range, in order; the status and
		// every PATCH answer report the Range received; an out-of-order
		// chunk is 416.
		chunked := randomBytes(3 * 1024)
		cd := digest.FromBytes(chunked)
		res, _ = c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
		loc := c.location(res)
		for i := 0; i < 3; i++ {
			part := chunked[i*1024 : (i+1)*1024]
			if i == 1 {
				c.expectError(http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID", "PATCH", loc, part,
					"Content-Type", "application/octet-stream", "Content-Range", "2048-3071", "Content-Length", "1024")
			}
			res, _ = c.expect(http.StatusAccepted, "PATCH", loc, part, "Content-Type", "application/octet-stream",
				"Content-Range", fmt.Sprintf("%d-%d", i*1024, (i+1)*1024-1), "Content-Length", "1024")
			if want := fmt.Sprintf("0-%d", (i+1)*1024-1); res.Header.Get("Range") != want {
				t.Errorf("PATCH %d: Range %q, want %q", i, res.Header.Get("Range"), want)
			}
			loc = c.location(res)
		}
		res, _ = c.expect(http.StatusNoContent, "GET", loc, nil)
		if res.Header.Get("Range") != "0-3071" {
			t.Errorf("upload status Range %q", res.Header.Get("Range"))
		}
		c.expect(http.StatusCreated, "PUT", withDigest(loc, cd), nil, "Content-Length", "0")
		pushed.content[cd] = chunked

		// Streamed: one PATCH with no Content-Range, then PUT.
		streamed := randomBytes(5000)
		sd := digest.FromBytes(streamed)
		res, _ = c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
		res, _ = c.expect(http.StatusAccepted, "PATCH", c.location(res), streamed, "Content-Type", "application/octet-stream")
		c.expect(http.StatusCreated, "PUT", withDigest(c.location(res), sd), nil)
		pushed.content[sd] = streamed

		layers := []v1.Descriptor{
			{MediaType: v1.MediaTypeImageLayerGzip, Digest: md, Size: int64(len(mono))},
			{MediaType: v1.MediaTypeImageLayerGzip, Digest: cd, Size: int64(len(chunked))},
			{MediaType: v1.MediaTypeImageLayerGzip, Digest: sd, Size: int64(len(streamed))},
		}
		for _, l := range append([]v1.Descriptor{cfg}, layers...) {
			c.expect(200, "HEAD", "/v2/"+repo+"/blobs/"+l.Digest.String(), nil)
		}

		// Manifest PUT by tag and by digest.
		body := ociManifest(cfg, layers, "", nil)
		md2 := digest.FromBytes(body)
		res, _ = c.expect(http.StatusCreated, "PUT", "/v2/"+repo+"/manifests/v1", body, "Content-Type", v1.MediaTypeImageManifest)
		if res.Header.Get("Location") == "" || res.Header.Get("Docker-Content-Digest") != md2.String() {
			t.Errorf("manifest PUT headers: %v", res.Header)
		}
		c.expect(http.StatusCreated, "PUT", "/v2/"+repo+"/manifests/"+md2.String(), body, "Content-Type", v1.MediaTypeImageManifest)
		pushed.manifest = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: md2, Size: int64(len(body))}
		pushed.body = body
		pushed.blobs = append([]v1.Descriptor{cfg}, layers...)

		// Cross-repository mount within the project: 201, no upload.
		res, _ = c.expect(http.StatusCreated, "POST", "/v2/"+proj+"/mounted/blobs/uploads/?mount="+cd.String()+"&from="+repo, nil)
		if res.Header.Get("Docker-Content-Digest") != cd.String() {
			t.Errorf("mount headers: %v", res.Header)
		}
		c.expect(200, "HEAD", "/v2/"+proj+"/mounted/blobs/"+cd.String(), nil)
		// Mounting what the source does not have opens a plain upload.
		c.expect(http.StatusAccepted, "POST", "/v2/"+proj+"/mounted/blobs/uploads/?mount="+digest.FromString("absent").String()+"&from="+repo, nil)
	})

	t.Run("pull", func(t *testing.T) {
		c := s.oci(t, s.Token)
		for _, ref := range []string{"v1", pushed.manifest.Digest.String()} {
			res, body := c.expect(200, "GET", "/v2/"+repo+"/manifests/"+ref, nil)
			if !bytes.Equal(body, pushed.body) || res.Header.Get("Docker-Content-Digest") != pushed.manifest.Digest.String() ||
				res.Header.Get("Content-Type") != v1.MediaTypeImageManifest {
				t.Errorf("GET manifest %s: %v %s", ref, res.Header, body)
			}
			res, body = c.expect(200, "HEAD", "/v2/"+repo+"/manifests/"+ref, nil)
			if len(body) != 0 || res.Header.Get("Content-Length") != strconv.Itoa(len(pushed.body)) || res.Header.Get("Docker-Content-Digest") != pushed.manifest.Digest.String() {
				t.Errorf("HEAD manifest %s: %v", ref, res.Header)
			}
		}
		for _, b := range pushed.blobs {
			_, body := c.expect(200, "GET", "/v2/"+repo+"/blobs/"+b.Digest.String(), nil)
			if digest.FromBytes(body) != b.Digest {
				t.Errorf("GET blob %s: wrong content", b.Digest)
			}
			res, _ := c.expect(200, "HEAD", "/v2/"+repo+"/blobs/"+b.Digest.String(), nil)
			if res.Header.Get("Content-Length") != strconv.FormatInt(b.Size, 10) {
				t.Errorf("HEAD blob %s: Content-Length %s", b.Digest, res.Header.Get("Content-Length"))
			}
		}
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/nosuchtag", nil)
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/"+digest.FromString("nothing").String(), nil)
		c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+repo+"/blobs/"+digest.FromString("nothing").String(), nil)
		c.expectError(404, "", "HEAD", "/v2/"+repo+"/blobs/"+digest.FromString("nothing").String(), nil)
		c.expectError(404, "NAME_UNKNOWN", "GET", "/v2/"+proj+"/never-pushed/tags/list", nil)
	})

	t.Run("content discovery", func(t *testing.T) {
		c := s.oci(t, s.Token)
		var want []string
		for i := range 7 {
			tag := fmt.Sprintf("t%d", i)
			c.expect(http.StatusCreated, "PUT", "/v2/"+repo+"/manifests/"+tag, pushed.body, "Content-Type", v1.MediaTypeImageManifest)
			want = append(want, tag)
		}
		want = append(want, "v1")
		slices.Sort(want)
		var list struct {
			Name string
			Tags []string
		}
		_, body := c.expect(200, "GET", "/v2/"+repo+"/tags/list", nil)
		json.Unmarshal(body, &list)
		if list.Name != repo || !slices.Equal(list.Tags, want) {
			t.Errorf("tags/list = %s, want %v", body, want)
		}
		// n pages, Link to the next page until the last.
		var got []string
		next := "/v2/" + repo + "/tags/list?n=3"
		for pages := 0; next != ""; pages++ {
			if pages > 5 {
				t.Fatal("tags pagination does not end")
			}
			res, body := c.expect(200, "GET", next, nil)
			json.Unmarshal(body, &list)
			if len(list.Tags) > 3 {
				t.Errorf("page of n=3 has %d tags", len(list.Tags))
			}
			got = append(got, list.Tags...)
			next = ""
			if link := res.Header.Get("Link"); link != "" {
				if !strings.Contains(link, `rel="next"`) {
					t.Fatalf("Link %q", link)
				}
				next = strings.TrimSuffix(strings.TrimPrefix(strings.SplitN(link, ";", 2)[0], "<"), ">")
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("paged tags = %v, want %v", got, want)
		}
		_, body = c.expect(200, "GET", "/v2/"+repo+"/tags/list?n=2&last=t3", nil)
		json.Unmarshal(body, &list)
		if !slices.Equal(list.Tags, []string{"t4", "t5"}) {
			t.Errorf("tags after t3 = %v", list.Tags)
		}

		// Referrers: two artifacts attached to the image; a filter by type.
		empty := c.pushBlob(repo, []byte("{}"), "application/vnd.oci.empty.v1+json")
		var refs []digest.Digest
		for _, typ := range []string{"application/vnd.example.signature", "application/vnd.example.sbom"} {
			b := ociManifest(empty, []v1.Descriptor{empty}, typ, &pushed.manifest)
			res, _ := c.expect(http.StatusCreated, "PUT", "/v2/"+repo+"/manifests/"+digest.FromBytes(b).String(), b, "Content-Type", v1.MediaTypeImageManifest)
			if res.Header.Get("OCI-Subject") != pushed.manifest.Digest.String() {
				t.Errorf("PUT with a subject: OCI-Subject %q", res.Header.Get("OCI-Subject"))
			}
			refs = append(refs, digest.FromBytes(b))
		}
		var idx struct {
			SchemaVersion int
			MediaType     string
			Manifests     []v1.Descriptor
		}
		res, body := c.expect(200, "GET", "/v2/"+repo+"/referrers/"+pushed.manifest.Digest.String(), nil)
		json.Unmarshal(body, &idx)
		if res.Header.Get("Content-Type") != v1.MediaTypeImageIndex || idx.MediaType != v1.MediaTypeImageIndex || len(idx.Manifests) != 2 {
			t.Errorf("referrers: %v %s", res.Header, body)
		}
		res, body = c.expect(200, "GET", "/v2/"+repo+"/referrers/"+pushed.manifest.Digest.String()+"?artifactType=application/vnd.example.sbom", nil)
		idx.Manifests = nil
		json.Unmarshal(body, &idx)
		if res.Header.Get("OCI-Filters-Applied") != "artifactType" || len(idx.Manifests) != 1 || idx.Manifests[0].Digest != refs[1] ||
			idx.Manifests[0].ArtifactType != "application/vnd.example.sbom" {
			t.Errorf("filtered referrers: %v %s", res.Header, body)
		}
		_, body = c.expect(200, "GET", "/v2/"+repo+"/referrers/"+digest.FromString("no subject").String(), nil)
		if !strings.Contains(string(body), `"manifests":[]`) {
			t.Errorf("referrers of an unknown subject: %s", body)
		}
	})

	t.Run("content management", func(t *testing.T) {
		c := s.oci(t, s.Token)
		// Tag delete: the tag goes, the manifest stays.
		c.expect(http.StatusAccepted, "DELETE", "/v2/"+repo+"/manifests/t0", nil)
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/t0", nil)
		c.expect(200, "GET", "/v2/"+repo+"/manifests/"+pushed.manifest.Digest.String(), nil)
		// Manifest delete by digest: the manifest and its tags go.
		c.expect(http.StatusAccepted, "DELETE", "/v2/"+repo+"/manifests/"+pushed.manifest.Digest.String(), nil)
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/"+pushed.manifest.Digest.String(), nil)
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/v1", nil)
		c.expectError(404, "MANIFEST_UNKNOWN", "DELETE", "/v2/"+repo+"/manifests/"+pushed.manifest.Digest.String(), nil)
		// Blob delete.
		b := pushed.blobs[1].Digest.String()
		c.expect(http.StatusAccepted, "DELETE", "/v2/"+repo+"/blobs/"+b, nil)
		c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+repo+"/blobs/"+b, nil)
		c.expectError(404, "BLOB_UNKNOWN", "DELETE", "/v2/"+repo+"/blobs/"+b, nil)
	})
}

// Scoping from the attacker's side: a project token of A, a pull token of
// A and an anonymous client go after project B.
func TestRegistryScopingFromTheAttackersSide(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	projA := s.createProject(t, "victim-a")
	projB := s.createProject(t, "victim-b")
	dir := t.TempDir()
	tokenOf := func(args ...string) string {
		r := s.mustKiln(t, dir, append([]string{"tokens", "create"}, args...)...)
		return strings.TrimSpace(r.Stdout)
	}
	tokA := tokenOf("--project", projA)
	pullA := tokenOf("--project", projA, "--kind", "pull")
	admin := s.oci(t, s.Token)
	bImg, bBlobs := admin.pushImage(projB+"/secret", "v1", "B's secret")
	admin.pushImage(projA+"/app", "v1", "A's own")

	a := s.oci(t, tokA)
	layerB := bBlobs[1].Digest.String()
	// Every way at B: 403 DENIED, the same for a repository that exists,
	// one that does not, and a project that does not exist.
	for _, target := range []string{projB + "/secret", projB + "/nothing", "nosuchproject/x"} {
		for _, r := range []struct{ method, path string }{
			{"GET", "/v2/" + target + "/tags/list"},
			{"GET", "/v2/" + target + "/manifests/v1"},
			{"HEAD", "/v2/" + target + "/manifests/v1"},
			{"GET", "/v2/" + target + "/manifests/" + bImg.Digest.String()},
			{"GET", "/v2/" + target + "/blobs/" + layerB},
			{"GET", "/v2/" + target + "/referrers/" + bImg.Digest.String()},
			{"POST", "/v2/" + target + "/blobs/uploads/"},
			{"POST", "/v2/" + target + "/blobs/uploads/?mount=" + layerB + "&from=" + projA + "/app"},
			{"PUT", "/v2/" + target + "/manifests/hijack"},
			{"DELETE", "/v2/" + target + "/manifests/" + bImg.Digest.String()},
			{"DELETE", "/v2/" + target + "/manifests/v1"},
			{"DELETE", "/v2/" + target + "/blobs/" + layerB},
		} {
			a.expectError(http.StatusForbidden, "DENIED", r.method, r.path, nil)
		}
	}
	// Mounting B's blob into A is not done (a plain upload session opens),
	// and tells nothing: the answer is the one for a blob B does not have.
	res, _ := a.expect(http.StatusAccepted, "POST", "/v2/"+projA+"/app/blobs/uploads/?mount="+layerB+"&from="+projB+"/secret", nil)
	res2, _ := a.expect(http.StatusAccepted, "POST", "/v2/"+projA+"/app/blobs/uploads/?mount="+digest.FromString("x").String()+"&from="+projB+"/secret", nil)
	if res.Header.Get("Docker-Content-Digest") != "" || res2.Header.Get("Docker-Content-Digest") != "" {
		t.Errorf("cross-project mount answered with a digest")
	}
	a.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+projA+"/app/blobs/"+layerB, nil)
	// B's content is intact.
	admin.expect(200, "GET", "/v2/"+projB+"/secret/manifests/v1", nil)
	admin.expect(200, "GET", "/v2/"+projB+"/secret/blobs/"+layerB, nil)

	// The catalog lists only what the caller may read.
	var cat struct{ Repositories []string }
	_, body := a.expect(200, "GET", "/v2/_catalog", nil)
	json.Unmarshal(body, &cat)
	if !slices.Equal(cat.Repositories, []string{projA + "/app"}) {
		t.Errorf("A's catalog = %v", cat.Repositories)
	}
	_, body = admin.expect(200, "GET", "/v2/_catalog?n=1", nil)
	json.Unmarshal(body, &cat)
	if len(cat.Repositories) != 1 {
		t.Errorf("admin catalog n=1 = %v", cat.Repositories)
	}

	// The same through a real client and the token flow.
	host := strings.TrimPrefix(s.URL, "http://")
	ggcrAuth := remote.WithAuth(&authn.Basic{Username: "x-token", Password: tokA})
	ref, _ := name.ParseReference(host+"/"+projB+"/secret:v1", name.Insecure)
	if _, err := remote.Image(ref, ggcrAuth); registryStatus(err) != http.StatusForbidden && registryStatus(err) != http.StatusUnauthorized {
		t.Errorf("ggcr pull of B with A's token: %v", err)
	}
	if err := pushRandom(t, host+"/"+projB+"/secret:v2", tokA); registryStatus(err) != http.StatusForbidden && registryStatus(err) != http.StatusUnauthorized {
		t.Errorf("ggcr push to B with A's token: %v", err)
	}

	// A pull token reads A and writes nothing.
	p := s.oci(t, pullA)
	p.expect(200, "GET", "/v2/"+projA+"/app/manifests/v1", nil)
	p.expectError(http.StatusForbidden, "DENIED", "POST", "/v2/"+projA+"/app/blobs/uploads/", nil)
	p.expectError(http.StatusForbidden, "DENIED", "PUT", "/v2/"+projA+"/app/manifests/v2", nil)
	p.expectError(http.StatusForbidden, "DENIED", "DELETE", "/v2/"+projA+"/app/manifests/v1", nil)
	p.expectError(http.StatusForbidden, "DENIED", "GET", "/v2/"+projB+"/secret/manifests/v1", nil)
	if err := pushRandom(t, host+"/"+projA+"/app:v9", pullA); registryStatus(err) != http.StatusForbidden && registryStatus(err) != http.StatusUnauthorized {
		t.Errorf("ggcr push with a pull token: %v", err)
	}

	// Anonymous: 401 with the bearer challenge, everywhere.
	anon := s.oci(t, "")
	for _, path := range []string{"/v2/", "/v2/_catalog", "/v2/" + projA + "/app/manifests/v1", "/v2/" + projB + "/secret/blobs/" + layerB} {
		res := anon.expectError(http.StatusUnauthorized, "UNAUTHORIZED", "GET", path, nil)
		if ch := res.Header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, `Bearer realm="`+s.URL+`/v2/token",service="kiln"`) {
			t.Errorf("%s: challenge %q", path, ch)
		}
	}
	res = anon.expectError(http.StatusUnauthorized, "UNAUTHORIZED", "GET", "/v2/"+projA+"/app/manifests/v1", nil)
	if ch := res.Header.Get("WWW-Authenticate"); !strings.HasSuffix(ch, `scope="repository:`+projA+`/app:pull"`) {
		t.Errorf("challenge scope: %q", ch)
	}
	anon.expectError(http.StatusUnauthorized, "UNAUTHORIZED", "GET", "/v2/token?service=kiln&scope=repository:"+projA+"/app:pull", nil)
	s.oci(t, "kiln_prj_forged").expectError(http.StatusUnauthorized, "UNAUTHORIZED", "GET", "/v2/"+projA+"/app/manifests/v1", nil)

	// Denials reach the audit log (never the anonymous first request).
	r := s.mustKiln(t, dir, "audit", "--kind", "denied")
	if !strings.Contains(r.Stdout, "registry") {
		t.Errorf("no registry denial in the audit log:\n%s", tail(r.Stdout, 2000))
	}
}

// Retention and garbage collection while the registry serves: an image
// past retention is gone, one within retention is intact blob by blob, and
// a slow chunked push across collections completes and verifies.
func TestRegistryRetentionAndGC(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--registry-gc-interval", "300ms", "--registry-gc-grace", "2s")
	expiring := s.createProject(t, "expiring")
	kept := s.createProject(t, "kept")
	dir := t.TempDir()
	r := s.mustKiln(t, dir, "projects", "update", expiring, "--registry-retention", "4s")
	if !strings.Contains(r.Stderr, "registry retention of "+expiring+": 4s") {
		t.Errorf("projects update --registry-retention said:\n%s", r.Stderr)
	}
	if r := s.kiln(t, dir, nil, "projects", "update", expiring, "--registry-retention", "soon"); r.Err == nil {
		t.Errorf("--registry-retention soon accepted")
	}
	c := s.oci(t, s.Token)
	old, oldBlobs := c.pushImage(expiring+"/app", "old", "expires")
	keep, keepBlobs := c.pushImage(kept+"/app", "v1", "stays")
	start := time.Now()

	// The slow push: 12 chunks, 600 ms apart (longer than the retention and
	// the grace period, shorter gaps than the grace period).
	res, _ := c.expect(http.StatusAccepted, "POST", "/v2/"+expiring+"/app/blobs/uploads/", nil)
	loc := c.location(res)
	var content []byte
	goneDuringPush := false
	for range 12 {
		chunk := randomBytes(4096)
		res, _ := c.expect(http.StatusAccepted, "PATCH", loc, chunk, "Content-Type", "application/octet-stream",
			"Content-Range", fmt.Sprintf("%d-%d", len(content), len(content)+len(chunk)-1))
		content = append(content, chunk...)
		loc = c.location(res)
		// Watched on disk: a registry request for it would be a use of it,
		// which keeps it from the collector for the grace period.
		goneDuringPush = goneDuringPush || (!blobStored(s, old.Digest) && !blobStored(s, oldBlobs[1].Digest))
		time.Sleep(600 * time.Millisecond)
	}
	layer := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromBytes(content), Size: int64(len(content))}
	c.expect(http.StatusCreated, "PUT", withDigest(loc, layer.Digest), nil)
	cfg := c.pushBlob(expiring+"/app", []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), v1.MediaTypeImageConfig)
	body := ociManifest(cfg, []v1.Descriptor{layer}, "", nil)
	c.expect(http.StatusCreated, "PUT", "/v2/"+expiring+"/app/manifests/new", body, "Content-Type", v1.MediaTypeImageManifest)
	// It verifies: manifest and every blob, byte for byte.
	_, got := c.expect(200, "GET", "/v2/"+expiring+"/app/manifests/new", nil)
	if !bytes.Equal(got, body) {
		t.Errorf("the pushed manifest reads back different")
	}
	for _, b := range []v1.Descriptor{cfg, layer} {
		if _, got := c.expect(200, "GET", "/v2/"+expiring+"/app/blobs/"+b.Digest.String(), nil); digest.FromBytes(got) != b.Digest {
			t.Errorf("blob %s reads back different", b.Digest)
		}
	}
	if !goneDuringPush {
		t.Errorf("the expired image was not collected while the push ran (%s): the test proves nothing", time.Since(start))
	}

	// The expired image is gone, blobs included.
	eventually(t, 20*time.Second, "the expired image's blobs to be collected", func() bool {
		return !blobStored(s, old.Digest) && !blobStored(s, oldBlobs[0].Digest) && !blobStored(s, oldBlobs[1].Digest)
	})
	c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+expiring+"/app/manifests/old", nil)
	c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+expiring+"/app/manifests/"+old.Digest.String(), nil)
	c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+expiring+"/app/blobs/"+oldBlobs[1].Digest.String(), nil)
	c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+expiring+"/app/blobs/"+oldBlobs[0].Digest.String(), nil)
	// The image within retention is intact.
	_, got = c.expect(200, "GET", "/v2/"+kept+"/app/manifests/v1", nil)
	if digest.FromBytes(got) != keep.Digest {
		t.Errorf("kept manifest changed")
	}
	for _, b := range keepBlobs {
		if _, got := c.expect(200, "GET", "/v2/"+kept+"/app/blobs/"+b.Digest.String(), nil); digest.FromBytes(got) != b.Digest {
			t.Errorf("kept blob %s changed", b.Digest)
		}
	}

	// An operator can run a collection on demand (organization token only).
	admin := kilnv1connect.NewRegistryAdminServiceClient(http.DefaultClient, s.URL)
	if _, err := admin.CollectGarbage(t.Context(), bearer(&kilnv1.CollectGarbageRequest{}, s.Token)); err != nil {
		t.Errorf("CollectGarbage: %v", err)
	}
	tok := strings.TrimSpace(s.mustKiln(t, dir, "tokens", "create", "--project", kept).Stdout)
	if _, err := admin.CollectGarbage(t.Context(), bearer(&kilnv1.CollectGarbageRequest{}, tok)); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("CollectGarbage with a project token: %v", err)
	}
	if res, err := admin.GetRegistrySettings(t.Context(), bearer(&kilnv1.GetRegistrySettingsRequest{ProjectId: kept}, tok)); err != nil ||
		!res.Msg.Settings.RetentionIsDefault || res.Msg.Settings.Retention.AsDuration() != 7*24*time.Hour {
		t.Errorf("GetRegistrySettings: %v %v", res, err)
	}
	if _, err := admin.UpdateRegistrySettings(t.Context(), bearer(&kilnv1.UpdateRegistrySettingsRequest{ProjectId: kept}, tok)); err != nil {
		t.Errorf("UpdateRegistrySettings without a change: %v", err)
	}
	if r := s.kiln(t, dir, []string{"KILN_TOKEN=" + tok}, "projects", "update", kept, "--registry-retention", "1d"); r.Err == nil {
		t.Errorf("a project token changed the retention")
	}
}

// Issue 14's points, as a client sees them: a manifest named by an invalid
// tag (the official suite's ".INVALID_MANIFEST_NAME") is unknown to GET and
// HEAD (404) and refused to PUT (400); the API version header comes once;
// the catalog lists only the caller's project's repositories that hold
// content; a single POST with ?digest= and the blob stores it.
func TestRegistrySpecPoints(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj, other := s.createProject(t, "spec"), s.createProject(t, "spec-other")
	tok := s.projectToken(t, proj)
	c, admin := s.oci(t, tok), s.oci(t, s.Token)
	repo := proj + "/app"
	cfg := c.pushBlob(repo, []byte(`{"architecture":"amd64","os":"linux"}`), v1.MediaTypeImageConfig)
	good := ociManifest(cfg, []v1.Descriptor{}, "", nil)

	t.Run("invalid tag", func(t *testing.T) {
		c := s.oci(t, tok)
		path := "/v2/" + repo + "/manifests/.INVALID_MANIFEST_NAME"
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", path, nil)
		c.expectError(404, "", "HEAD", path, nil)
		c.expectError(400, "TAG_INVALID", "PUT", path, good, "Content-Type", v1.MediaTypeImageManifest)
		// Without credentials it is the same challenge as for any manifest.
		s.oci(t, "").expectError(401, "UNAUTHORIZED", "GET", path, nil)
	})

	t.Run("API version header once", func(t *testing.T) {
		c := s.oci(t, tok)
		for _, r := range []struct{ method, path string }{
			{"GET", "/v2/"}, {"GET", "/v2/" + repo + "/blobs/" + cfg.Digest.String()}, {"HEAD", "/v2/" + repo + "/manifests/nope"},
			{"GET", "/v2/_catalog"}, {"GET", "/v2/" + repo + "/tags/list"},
		} {
			res := c.do(r.method, r.path, nil)
			res.Body.Close()
			if got := res.Header.Values("Docker-Distribution-Api-Version"); len(got) != 1 || got[0] != "registry/2.0" {
				t.Errorf("%s %s: HTTP %d, Docker-Distribution-Api-Version %q", r.method, r.path, res.StatusCode, got)
			}
		}
		res := s.oci(t, "").do("GET", "/v2/", nil)
		res.Body.Close()
		if got := res.Header.Values("Docker-Distribution-Api-Version"); len(got) != 1 {
			t.Errorf("anonymous /v2/: Docker-Distribution-Api-Version %q", got)
		}
	})

	t.Run("catalog", func(t *testing.T) {
		c := s.oci(t, tok)
		// An upload opened, never finished: no content.
		c.expect(http.StatusAccepted, "POST", "/v2/"+proj+"/opened/blobs/uploads/", nil)
		c.pushImage(proj+"/image", "v1", "spec image")
		admin.pushImage(other+"/theirs", "v1", "another project's")
		var cat struct{ Repositories []string }
		_, body := c.expect(200, "GET", "/v2/_catalog", nil)
		if err := json.Unmarshal(body, &cat); err != nil {
			t.Fatal(err)
		}
		if want := []string{proj + "/app", proj + "/image"}; !slices.Equal(cat.Repositories, want) {
			t.Errorf("the project token's catalog = %v, want %v", cat.Repositories, want)
		}
	})

	t.Run("single-request upload", func(t *testing.T) {
		c := s.oci(t, tok)
		blob := randomBytes(4096)
		d := digest.FromBytes(blob)
		res, _ := c.expect(http.StatusCreated, "POST", "/v2/"+proj+"/mono/blobs/uploads/?digest="+d.String(), blob,
			"Content-Type", "application/octet-stream", "Content-Length", strconv.Itoa(len(blob)))
		if !strings.HasSuffix(res.Header.Get("Location"), "/v2/"+proj+"/mono/blobs/"+d.String()) || res.Header.Get("Docker-Content-Digest") != d.String() {
			t.Errorf("201 headers: Location %q, Docker-Content-Digest %q", res.Header.Get("Location"), res.Header.Get("Docker-Content-Digest"))
		}
		if _, got := c.expect(200, "GET", "/v2/"+proj+"/mono/blobs/"+d.String(), nil); !bytes.Equal(got, blob) {
			t.Errorf("the stored blob differs (%d bytes)", len(got))
		}
		// A body that does not match its digest: 400, and nothing stored.
		other := randomBytes(4096)
		c.expectError(400, "DIGEST_INVALID", "POST", "/v2/"+proj+"/mismatch/blobs/uploads/?digest="+d.String(), other, "Content-Type", "application/octet-stream")
		c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+proj+"/mismatch/blobs/"+digest.FromBytes(other).String(), nil)
		if blobStored(s, digest.FromBytes(other)) {
			t.Errorf("a refused upload's content is on disk")
		}
		// Malformed digests, a body without a digest.
		for _, q := range []string{"?digest=", "?digest=sha256:nothex", "?digest=sha256", "?digest=" + strings.Repeat("%ff", 300)} {
			c.expectError(400, "DIGEST_INVALID", "POST", "/v2/"+proj+"/mismatch/blobs/uploads/"+q, other, "Content-Type", "application/octet-stream")
		}
		c.expectError(400, "DIGEST_INVALID", "POST", "/v2/"+proj+"/mismatch/blobs/uploads/", other, "Content-Type", "application/octet-stream")
		// A Content-Length no disk holds is refused before the body.
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /v2/%s/huge/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\nabc",
			proj, d, c.auth, int64(1)<<60)
		hres, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		hb, _ := io.ReadAll(hres.Body)
		if hres.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(hb), "registry storage full") {
			t.Errorf("Content-Length 2^60: HTTP %d %s", hres.StatusCode, hb)
		}
		// The refused repositories hold nothing, and the server serves on.
		_, body := c.expect(200, "GET", "/v2/_catalog", nil)
		if strings.Contains(string(body), proj+"/mismatch") || strings.Contains(string(body), proj+"/huge") {
			t.Errorf("catalog lists a repository of refused uploads: %s", body)
		}
		c.pushImage(proj+"/after", "v1", "still serving")
	})
}

// A single-request upload into full storage is refused 507 "registry
// storage full" — before its body when Content-Length says it cannot fit,
// after the write failed when the body is streamed without one — leaves no
// upload session, and works once space is freed.
func TestRegistrySingleRequestUploadStorageFull(t *testing.T) {
	t.Parallel()
	s := startServerOnDisk(t, 96<<20)
	proj := s.createProject(t, "monofull")
	repo := proj + "/app"
	c := s.oci(t, s.Token)
	layer := randomBytes(4 << 20)
	path := "/v2/" + repo + "/blobs/uploads/?digest=" + digest.FromBytes(layer).String()
	free := fillDisk(t, s.Data)
	connStorageFull(t, s, "single-request upload with Content-Length", c.do("POST", path, layer, "Content-Type", "application/octet-stream"))

	// A reader of unknown length: the body goes chunked, without
	// Content-Length.
	req, err := http.NewRequest("POST", s.URL+path, io.MultiReader(bytes.NewReader(layer)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", c.auth)
	req.Header.Set("Content-Type", "application/octet-stream")
	res, err := ociHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	connStorageFull(t, s, "single-request upload streamed (no Content-Length)", res)
	if left := connUploads(s, repo); len(left) > 0 {
		t.Errorf("upload sessions left after the refused single-request uploads: %v", left)
	}
	c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+repo+"/blobs/"+digest.FromBytes(layer).String(), nil)

	free()
	c.expect(http.StatusCreated, "POST", path, layer, "Content-Type", "application/octet-stream")
	if _, got := c.expect(200, "GET", "/v2/"+repo+"/blobs/"+digest.FromBytes(layer).String(), nil); !bytes.Equal(got, layer) {
		t.Errorf("the blob stored after space was freed differs")
	}
}

// Bad input gets OCI error codes, and nothing half-written becomes visible.
func TestRegistryBadInput(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "bad")
	c := s.oci(t, s.Token)
	repo := proj + "/app"
	cfg := c.pushBlob(repo, []byte(`{"architecture":"amd64","os":"linux"}`), v1.MediaTypeImageConfig)

	// A manifest naming a blob the repository does not have.
	unknown := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromString("never uploaded"), Size: 14}
	c.expectError(400, "MANIFEST_BLOB_UNKNOWN", "PUT", "/v2/"+repo+"/manifests/v1", ociManifest(cfg, []v1.Descriptor{unknown}, "", nil), "Content-Type", v1.MediaTypeImageManifest)
	// Digest mismatches: a blob, a manifest PUT by digest.
	res, _ := c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	c.expectError(400, "DIGEST_INVALID", "PUT", withDigest(c.location(res), digest.FromString("other content")), []byte("content"), "Content-Type", "application/octet-stream")
	c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+repo+"/blobs/"+digest.FromString("content").String(), nil)
	good := ociManifest(cfg, []v1.Descriptor{}, "", nil)
	c.expectError(400, "DIGEST_INVALID", "PUT", "/v2/"+repo+"/manifests/"+digest.FromString("not this").String(), good, "Content-Type", v1.MediaTypeImageManifest)
	c.expectError(400, "DIGEST_INVALID", "PUT", "/v2/"+repo+"/manifests/sha256:123", good, "Content-Type", v1.MediaTypeImageManifest)
	// Oversized and malformed manifests.
	huge := append([]byte(`{"schemaVersion":2,"mediaType":"`+v1.MediaTypeImageManifest+`","annotations":{"x":"`), bytes.Repeat([]byte("a"), 4<<20)...)
	huge = append(huge, []byte(`"}}`)...)
	c.expectError(http.StatusRequestEntityTooLarge, "MANIFEST_INVALID", "PUT", "/v2/"+repo+"/manifests/huge", huge, "Content-Type", v1.MediaTypeImageManifest)
	c.expectError(400, "MANIFEST_INVALID", "PUT", "/v2/"+repo+"/manifests/garbage", []byte("{not json"), "Content-Type", v1.MediaTypeImageManifest)
	// Invalid names and tags.
	c.expectError(400, "NAME_INVALID", "GET", "/v2/"+strings.ToUpper(proj)+"/app/tags/list", nil)
	c.expectError(400, "NAME_INVALID", "POST", "/v2/"+proj+"/App/blobs/uploads/", nil)
	c.expectError(400, "NAME_INVALID", "GET", "/v2/"+proj+"/a..b/manifests/v1", nil)
	c.expectError(400, "NAME_INVALID", "GET", "/v2/"+proj+"/"+strings.Repeat("x", 300)+"/manifests/v1", nil)
	c.expectError(400, "TAG_INVALID", "PUT", "/v2/"+repo+"/manifests/-bad", good, "Content-Type", v1.MediaTypeImageManifest)
	c.expectError(400, "TAG_INVALID", "PUT", "/v2/"+repo+"/manifests/"+strings.Repeat("t", 129), good, "Content-Type", v1.MediaTypeImageManifest)
	c.expectError(400, "DIGEST_INVALID", "GET", "/v2/"+repo+"/blobs/sha256:zz", nil)
	// None of it is visible.
	c.expectError(404, "NAME_UNKNOWN", "GET", "/v2/"+repo+"/tags/list", nil)
	for _, tag := range []string{"v1", "huge", "garbage"} {
		c.expectError(404, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/"+tag, nil)
	}

	// An interrupted chunked upload: the connection drops mid-PATCH.
	full := randomBytes(64 << 10)
	res, _ = c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	loc := c.location(res)
	res, _ = c.expect(http.StatusAccepted, "PATCH", loc, full[:16<<10], "Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("0-%d", 16<<10-1))
	loc = c.location(res)
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: application/octet-stream\r\nContent-Range: %d-%d\r\nContent-Length: %d\r\n\r\n",
		loc, strings.TrimPrefix(s.URL, "http://"), c.auth, 16<<10, len(full)-1, len(full)-16<<10)
	conn.Write(full[16<<10 : 32<<10]) // half of what was announced
	conn.Close()
	time.Sleep(500 * time.Millisecond)
	// Completing it as if everything had arrived fails with an OCI code,
	// and the blob never appears.
	res = c.do("PUT", withDigest(loc, digest.FromBytes(full)), nil)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode < 400 || res.StatusCode >= 500 || !strings.Contains(string(b), `"code":"`) {
		t.Errorf("completing an interrupted upload: HTTP %d %s", res.StatusCode, b)
	}
	c.expectError(404, "BLOB_UNKNOWN", "GET", "/v2/"+repo+"/blobs/"+digest.FromBytes(full).String(), nil)
	c.expectError(404, "", "HEAD", "/v2/"+repo+"/blobs/"+digest.FromBytes(full).String(), nil)
	// Unknown upload sessions and endpoints.
	c.expectError(404, "BLOB_UPLOAD_UNKNOWN", "PATCH", "/v2/"+repo+"/blobs/uploads/00000000-0000-0000-0000-000000000000", []byte("x"), "Content-Type", "application/octet-stream")
	c.expectError(404, "NOT_FOUND", "GET", "/v2/"+repo+"/whatever", nil)
}

// blobStored reports whether kiln's registry holds a blob on disk.
func blobStored(s *server, d digest.Digest) bool {
	h := d.Encoded()
	_, err := os.Stat(filepath.Join(s.Data, "registry", "docker", "registry", "v2", "blobs", d.Algorithm().String(), h[:2], h, "data"))
	return err == nil
}

// dockerShell runs a shell command line with the dockerd's environment.
func dockerShell(t *testing.T, d *dockerd, line string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+d.Host, "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustConfigDigest(t *testing.T, img ggcrv1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// httpJSON calls a Connect procedure with JSON and returns the body.
func httpJSON(t *testing.T, s *server, procedure, token string, body any) string {
	t.Helper()
	status, out := rawJSON(t, s, token, procedure, body)
	b, _ := json.Marshal(out)
	if status != 200 {
		t.Errorf("%s: HTTP %d %s", procedure, status, b)
	}
	return string(b)
}
