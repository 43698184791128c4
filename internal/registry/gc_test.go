package registry

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/store"
)

// grace is the collector's grace period in these tests: the default, which
// the tests' clock moves past instead of waiting it out.
const grace = DefaultGCGrace

func (f *fixture) setRetention(project string, d time.Duration) {
	f.t.Helper()
	if err := f.st.PutRegistrySettings(context.Background(), store.RegistrySettings{ProjectID: project, Retention: d}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) collect() GCStats {
	f.t.Helper()
	st, err := f.reg.CollectGarbage(context.Background())
	if err != nil {
		f.t.Fatalf("collect: %v", err)
	}
	return st
}

// An image past its project's retention is gone after a collection, with
// its blobs; an image within retention, and every blob of it, stays.
func TestGCRetention(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	f.setRetention("p1", 2*time.Hour)
	old, oldBlobs := f.image(org, "p1/app", "old", "old content")
	// An index of the old image, pushed by digest (like a multi-platform
	// push's platform manifests), expires with it.
	oldIdx := index(old)
	if res := f.putManifest(org, "p1/app", digest.FromBytes(oldIdx).String(), oldIdx, v1.MediaTypeImageIndex); res.StatusCode != 201 {
		t.Fatalf("index: %d", res.StatusCode)
	}
	// p2 keeps the default retention (7 days): nothing of it expires.
	keepP2, keepP2Blobs := f.image(org, "p2/app", "old", "p2 content")
	// Past the retention, and so past the grace period too.
	f.clock.advance(2*time.Hour + time.Minute)
	fresh, freshBlobs := f.image(org, "p1/app", "fresh", "fresh content")

	st := f.collect()
	if st.TagsExpired != 1 || st.ManifestsDeleted != 2 || st.BlobsDeleted != 4 {
		t.Errorf("stats = %+v, want 1 tag, 2 manifests (image and index), 4 blobs (config, layer and the manifests)", st)
	}
	for _, p := range []string{"/v2/p1/app/manifests/old", "/v2/p1/app/manifests/" + old.Digest.String(),
		"/v2/p1/app/manifests/" + digest.FromBytes(oldIdx).String(),
		"/v2/p1/app/blobs/" + oldBlobs[0].Digest.String(), "/v2/p1/app/blobs/" + oldBlobs[1].Digest.String()} {
		if s := f.status("GET", p, org); s != 404 {
			t.Errorf("%s after GC: %d, want 404", p, s)
		}
	}
	for _, p := range []string{"/v2/p1/app/manifests/fresh", "/v2/p1/app/manifests/" + fresh.Digest.String(),
		"/v2/p1/app/blobs/" + freshBlobs[0].Digest.String(), "/v2/p1/app/blobs/" + freshBlobs[1].Digest.String(),
		"/v2/p2/app/manifests/old", "/v2/p2/app/manifests/" + keepP2.Digest.String(),
		"/v2/p2/app/blobs/" + keepP2Blobs[0].Digest.String(), "/v2/p2/app/blobs/" + keepP2Blobs[1].Digest.String()} {
		if s := f.status("GET", p, org); s != 200 {
			t.Errorf("%s after GC: %d, want 200", p, s)
		}
	}
	p := auth.Principal{Kind: auth.TokenOrg, OrgID: "o1"}
	if imgs, _, _ := f.reg.ListImages(context.Background(), p, "p1", 0, ""); len(imgs) != 1 || imgs[0].Tag != "app:fresh" {
		t.Errorf("ListImages after GC = %+v", imgs)
	}
	// A second run finds nothing more.
	if st := f.collect(); st.TagsExpired+st.ManifestsDeleted+st.BlobsDeleted != 0 {
		t.Errorf("second run: %+v", st)
	}
}

// A push the collector runs between every step of completes and
// verifies: a chunked upload spread over several collections, and a
// manifest that reuses an old, unreferenced blob the client just saw.
// Meanwhile an expired image is collected, so the collector is really
// deleting. The clock runs ahead of storage's own times, so storage's
// times protect nothing the push touches: the pins alone do.
// (test/e2e's TestRegistryRetentionAndGC runs collections concurrently
// with a slow push, on the real clock.)
func TestGCDuringPush(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	const retention = time.Hour
	f.setRetention("p1", retention)
	expired, _ := f.image(org, "p1/old", "v1", "expired")
	orphan := f.pushBlob(org, "p1/app", []byte("an orphan layer, uploaded long ago"), v1.MediaTypeImageLayerGzip)
	f.clock.advance(max(grace, retention) + time.Minute) // both older than retention and grace

	// Between the push's steps: a collection, then five minutes. The ten
	// steps from the orphan's HEAD to the manifest stay within the grace
	// period: a push slower than that is what the collector may break.
	var collected GCStats
	step := func() {
		t.Helper()
		st := f.collect()
		collected.ManifestsDeleted += st.ManifestsDeleted
		collected.BlobsDeleted += st.BlobsDeleted
		f.clock.advance(grace / 12)
	}

	// The client checks the orphan exists (it does), so it will not upload it.
	if s := f.status("HEAD", "/v2/p1/app/blobs/"+orphan.Digest.String(), org); s != 200 {
		t.Fatalf("HEAD orphan: %d", s)
	}
	step()
	// A slow chunked upload: 6 chunks, a collection and some minutes apart.
	res := f.do("POST", "/v2/p1/app/blobs/uploads/", org, nil)
	res.Body.Close()
	loc := f.location(res)
	step()
	var content []byte
	for i := range 6 {
		chunk := bytes.Repeat([]byte{byte('a' + i)}, 1000)
		res := f.do("PATCH", loc.String(), org, chunk, "Content-Type", "application/octet-stream",
			"Content-Range", fmt.Sprintf("%d-%d", len(content), len(content)+len(chunk)-1))
		res.Body.Close()
		if res.StatusCode != http.StatusAccepted {
			t.Fatalf("chunk %d: %d", i, res.StatusCode)
		}
		content = append(content, chunk...)
		loc = f.location(res)
		step()
	}
	layer := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromBytes(content), Size: int64(len(content))}
	q := loc.Query()
	q.Set("digest", layer.Digest.String())
	loc.RawQuery = q.Encode()
	if res := f.do("PUT", loc.String(), org, nil); res.StatusCode != 201 {
		t.Fatalf("finish chunked upload: %d %s", res.StatusCode, ociCode(t, res))
	}
	step() // a collection between blob and manifest
	cfg := f.pushBlob(org, "p1/app", []byte(`{"architecture":"amd64","os":"linux"}`), v1.MediaTypeImageConfig)
	step()
	body := manifest(cfg, []v1.Descriptor{orphan, layer}, "", nil, nil)
	if res := f.putManifest(org, "p1/app", "new", body, v1.MediaTypeImageManifest); res.StatusCode != 201 {
		t.Fatalf("manifest reusing the orphan: %d", res.StatusCode)
	}
	step()

	if collected.ManifestsDeleted == 0 || collected.BlobsDeleted == 0 {
		t.Errorf("the collector deleted nothing meanwhile (%+v): the test proves nothing", collected)
	}
	if s := f.status("GET", "/v2/p1/old/manifests/"+expired.Digest.String(), org); s != 404 {
		t.Errorf("expired image: %d", s)
	}
	// The new image verifies: every blob there with the right content.
	for _, d := range []v1.Descriptor{cfg, orphan, layer} {
		res := f.do("GET", "/v2/p1/app/blobs/"+d.Digest.String(), org, nil)
		var buf bytes.Buffer
		buf.ReadFrom(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || digest.FromBytes(buf.Bytes()) != d.Digest {
			t.Errorf("blob %s: %d", d.Digest, res.StatusCode)
		}
	}
}

// Upload sessions idle longer than the grace period are purged; a
// session in use is not.
func TestGCPurgesAbandonedUploads(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	res := f.do("POST", "/v2/p1/app/blobs/uploads/", org, nil)
	res.Body.Close()
	abandoned := f.location(res)
	res = f.do("PATCH", abandoned.String(), org, []byte("partial"), "Content-Type", "application/octet-stream")
	res.Body.Close()
	f.clock.advance(grace + time.Minute)
	res = f.do("POST", "/v2/p1/app/blobs/uploads/", org, nil)
	res.Body.Close()
	active := f.location(res)

	if st := f.collect(); st.UploadsPurged != 1 {
		t.Errorf("purged %d uploads, want the abandoned one", st.UploadsPurged)
	}
	if res := f.do("GET", abandoned.String(), org, nil); res.StatusCode != 404 || ociCode(t, res) != "BLOB_UPLOAD_UNKNOWN" {
		t.Errorf("abandoned upload: %d", res.StatusCode)
	}
	if s := f.status("GET", active.String(), org); s != http.StatusNoContent {
		t.Errorf("active upload: %d", s)
	}
}

// DeleteImages removes tags at once and gives up their retention: the next
// collection reclaims what nothing else keeps.
func TestDeleteImages(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	a, aBlobs := f.image(org, "p1", "a", "a")
	f.image(org, "p1/web", "b", "b")
	ctx := context.Background()
	admin := auth.Principal{Kind: auth.TokenOrg, OrgID: "o1", TokenID: "x"}
	pull := auth.Principal{Kind: auth.TokenPull, OrgID: "o1", ProjectID: "p1"}
	stranger := auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p2"}

	imgs, _, err := f.reg.ListImages(ctx, admin, "p1", 1, "")
	if err != nil || len(imgs) != 1 || imgs[0].Tag != "a" {
		t.Fatalf("page 1: %+v %v", imgs, err)
	}
	_, next, _ := f.reg.ListImages(ctx, admin, "p1", 1, "")
	imgs, next, err = f.reg.ListImages(ctx, admin, "p1", 1, next)
	if err != nil || len(imgs) != 1 || imgs[0].Tag != "web:b" || next != "" {
		t.Fatalf("page 2: %+v %q %v", imgs, next, err)
	}
	if _, _, err := f.reg.ListImages(ctx, admin, "p1", 1, "!!"); err == nil {
		t.Errorf("bad page token accepted")
	}
	if _, _, err := f.reg.ListImages(ctx, stranger, "p1", 0, ""); err == nil {
		t.Errorf("another project's token listed p1")
	}
	if err := f.reg.DeleteImages(ctx, pull, "p1", []string{"a"}); err == nil {
		t.Errorf("a pull token deleted an image")
	}
	if err := f.reg.DeleteImages(ctx, admin, "p1", []string{"../x"}); err == nil {
		t.Errorf("bad tag accepted")
	}
	if err := f.reg.DeleteImages(ctx, admin, "p1", []string{"a", "missing", "nope:x"}); err != nil {
		t.Fatal(err)
	}
	if imgs, _, _ := f.reg.ListImages(ctx, admin, "p1", 0, ""); len(imgs) != 1 || imgs[0].Tag != "web:b" {
		t.Errorf("after delete: %+v", imgs)
	}
	if s := f.status("GET", "/v2/p1/manifests/a", org); s != 404 {
		t.Errorf("deleted tag: %d", s)
	}
	f.clock.advance(grace)
	if st := f.collect(); st.ManifestsDeleted != 1 || st.BlobsDeleted != 3 {
		t.Errorf("after DeleteImages, collect = %+v, want the manifest, its config and layer", st)
	}
	for _, d := range append(aBlobs, a) {
		if s := f.status("GET", "/v2/p1/blobs/"+d.Digest.String(), org); s != 404 {
			t.Errorf("blob %s: %d", d.Digest, s)
		}
	}
}

// A deleted project's images go at the next collection.
func TestGCDeletedProject(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	img, _ := f.image(org, "p2/app", "v1", "doomed")
	if err := f.st.DeleteProject(context.Background(), "p2"); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(grace)
	if st := f.collect(); st.TagsExpired != 1 || st.ManifestsDeleted != 1 || st.BlobsDeleted != 3 {
		t.Errorf("collect = %+v", st)
	}
	if _, err := f.driver().Stat(context.Background(), blobDataPath(img.Digest)); !isNotFound(err) {
		t.Errorf("manifest blob of a deleted project: %v", err)
	}
}

func (f *fixture) driver() interface {
	Stat(ctx context.Context, path string) (interface{ ModTime() time.Time }, error)
} {
	return driverStat{f.reg}
}

type driverStat struct{ r *Registry }

func (d driverStat) Stat(ctx context.Context, p string) (interface{ ModTime() time.Time }, error) {
	return d.r.driver.Stat(ctx, p)
}
