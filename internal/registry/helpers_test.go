package registry

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// pushBlob uploads content to repo (POST, then PUT with the digest) and
// returns its descriptor.
func (f *fixture) pushBlob(authz, repo string, content []byte, mediaType string) v1.Descriptor {
	f.t.Helper()
	res := f.do("POST", "/v2/"+repo+"/blobs/uploads/", authz, nil)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		f.t.Fatalf("start upload to %s: %d", repo, res.StatusCode)
	}
	d := digest.FromBytes(content)
	loc := f.location(res)
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	res = f.do("PUT", loc.String(), authz, content, "Content-Type", "application/octet-stream")
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		f.t.Fatalf("finish upload to %s: %d", repo, res.StatusCode)
	}
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(content))}
}

// location is a response's Location as a path with query.
func (f *fixture) location(res *http.Response) *url.URL {
	f.t.Helper()
	u, err := url.Parse(res.Header.Get("Location"))
	if err != nil || u.Path == "" {
		f.t.Fatalf("bad Location %q", res.Header.Get("Location"))
	}
	return &url.URL{Path: u.Path, RawQuery: u.RawQuery}
}

// manifest is an OCI image manifest with optional artifactType and subject.
func manifest(config v1.Descriptor, layers []v1.Descriptor, artifactType string, subject *v1.Descriptor, annotations map[string]string) []byte {
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     v1.MediaTypeImageManifest,
		"config":        config,
		"layers":        layers,
	}
	if artifactType != "" {
		m["artifactType"] = artifactType
	}
	if subject != nil {
		m["subject"] = subject
	}
	if annotations != nil {
		m["annotations"] = annotations
	}
	b, _ := json.Marshal(m)
	return b
}

func index(manifests ...v1.Descriptor) []byte {
	b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": v1.MediaTypeImageIndex, "manifests": manifests})
	return b
}

// putManifest PUTs body at repo:ref and returns the response (body closed).
func (f *fixture) putManifest(authz, repo, ref string, body []byte, mediaType string) *http.Response {
	f.t.Helper()
	res := f.do("PUT", "/v2/"+repo+"/manifests/"+ref, authz, body, "Content-Type", mediaType)
	res.Body.Close()
	return res
}

// image pushes a config and one layer with the given content and a
// manifest at ref; it returns the manifest's descriptor and the blobs.
func (f *fixture) image(authz, repo, ref, content string) (v1.Descriptor, []v1.Descriptor) {
	f.t.Helper()
	cfg := f.pushBlob(authz, repo, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"x":"`+content+`"}`), v1.MediaTypeImageConfig)
	layer := f.pushBlob(authz, repo, []byte("layer "+content), v1.MediaTypeImageLayerGzip)
	body := manifest(cfg, []v1.Descriptor{layer}, "", nil, nil)
	res := f.putManifest(authz, repo, ref, body, v1.MediaTypeImageManifest)
	if res.StatusCode != http.StatusCreated {
		f.t.Fatalf("put manifest %s:%s: %d", repo, ref, res.StatusCode)
	}
	return v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))},
		[]v1.Descriptor{cfg, layer}
}

// manifestAccept is what pulling clients accept.
const manifestAccept = v1.MediaTypeImageManifest + ", " + v1.MediaTypeImageIndex +
	", application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

func (f *fixture) status(method, path, authz string) int {
	f.t.Helper()
	res := f.do(method, path, authz, nil, "Accept", manifestAccept)
	res.Body.Close()
	return res.StatusCode
}

func mustJSON(t *testing.T, res *http.Response, v any) {
	t.Helper()
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		t.Fatalf("decode: %v", err)
	}
}

// testClock is a registry clock a test moves forward: real time plus an
// offset. Times storage keeps itself (files' modification times) stay real,
// so after an advance everything stored before looks as old as the offset
// says, and what is stored after looks old too: only the pins protect it,
// which is the collector's in-process guarantee. A collection running
// concurrently with requests would also need storage's times (a file
// created before the request pinned it), so tests with an advanced clock
// collect between requests, never during them.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// advance moves the clock d forward.
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}
