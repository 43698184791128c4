package registry

import (
	"context"
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/auth"
)

type referrersIndex struct {
	SchemaVersion int
	MediaType     string
	Manifests     []v1.Descriptor
}

func TestReferrers(t *testing.T) {
	f := newFixture(t)
	org := basic(f.token(auth.TokenOrg, "o1", ""))
	subject, _ := f.image(org, "p1/app", "v1", "subject")
	empty := f.pushBlob(org, "p1/app", []byte("{}"), "application/vnd.oci.empty.v1+json")

	// A signature with an artifactType, an SBOM whose type is its config's.
	sig := manifest(empty, []v1.Descriptor{empty}, "application/vnd.example.sig", &subject, map[string]string{"org.example.signer": "ci"})
	res := f.putManifest(org, "p1/app", digest.FromBytes(sig).String(), sig, v1.MediaTypeImageManifest)
	if res.StatusCode != http.StatusCreated || res.Header.Get("OCI-Subject") != subject.Digest.String() {
		t.Fatalf("PUT referrer: %d, OCI-Subject %q", res.StatusCode, res.Header.Get("OCI-Subject"))
	}
	sbomCfg := f.pushBlob(org, "p1/app", []byte(`{"sbom":true}`), "application/vnd.example.sbom.config+json")
	sbom := manifest(sbomCfg, []v1.Descriptor{empty}, "", &subject, nil)
	if res := f.putManifest(org, "p1/app", digest.FromBytes(sbom).String(), sbom, v1.MediaTypeImageManifest); res.StatusCode != 201 {
		t.Fatalf("PUT sbom: %d", res.StatusCode)
	}
	// A manifest without a subject gets no OCI-Subject header.
	if res := f.putManifest(org, "p1/app", "plain", manifest(empty, nil, "", nil, nil), v1.MediaTypeImageManifest); res.StatusCode != 201 || res.Header.Get("OCI-Subject") != "" {
		t.Errorf("PUT plain: %d %q", res.StatusCode, res.Header.Get("OCI-Subject"))
	}
	// The same subject digest in another repository is not a referrer here.
	other := manifest(empty, nil, "application/vnd.example.sig", &subject, nil)
	f.pushBlob(org, "p1/other", []byte("{}"), "application/vnd.oci.empty.v1+json")
	if res := f.putManifest(org, "p1/other", "x", other, v1.MediaTypeImageManifest); res.StatusCode != 201 {
		t.Fatalf("PUT other: %d", res.StatusCode)
	}

	list := func(query string) (referrersIndex, http.Header) {
		t.Helper()
		res := f.do("GET", "/v2/p1/app/referrers/"+subject.Digest.String()+query, org, nil)
		if res.StatusCode != 200 || res.Header.Get("Content-Type") != v1.MediaTypeImageIndex {
			t.Fatalf("referrers%s: %d %s", query, res.StatusCode, res.Header.Get("Content-Type"))
		}
		var idx referrersIndex
		mustJSON(t, res, &idx)
		return idx, res.Header
	}
	idx, h := list("")
	if idx.SchemaVersion != 2 || idx.MediaType != v1.MediaTypeImageIndex || len(idx.Manifests) != 2 || h.Get("OCI-Filters-Applied") != "" {
		t.Fatalf("referrers = %+v %v", idx, h)
	}
	byDigest := map[digest.Digest]v1.Descriptor{}
	for _, d := range idx.Manifests {
		byDigest[d.Digest] = d
	}
	s := byDigest[digest.FromBytes(sig)]
	if s.ArtifactType != "application/vnd.example.sig" || s.Size != int64(len(sig)) || s.MediaType != v1.MediaTypeImageManifest || s.Annotations["org.example.signer"] != "ci" {
		t.Errorf("signature descriptor = %+v", s)
	}
	if b := byDigest[digest.FromBytes(sbom)]; b.ArtifactType != "application/vnd.example.sbom.config+json" {
		t.Errorf("sbom descriptor (artifactType from config) = %+v", b)
	}

	idx, h = list("?artifactType=application/vnd.example.sig")
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest.FromBytes(sig) || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Errorf("filtered = %+v %v", idx, h)
	}
	// No referrers, an unknown subject, an empty repository: an empty index, never 404.
	for _, path := range []string{"/v2/p1/app/referrers/" + digest.FromString("nothing").String(), "/v2/p1/nothing/referrers/" + subject.Digest.String()} {
		res := f.do("GET", path, org, nil)
		var idx referrersIndex
		mustJSON(t, res, &idx)
		if res.StatusCode != 200 || idx.Manifests == nil || len(idx.Manifests) != 0 {
			t.Errorf("%s: %d %+v", path, res.StatusCode, idx)
		}
	}
	if res := f.do("GET", "/v2/p1/app/referrers/sha256:nothex", org, nil); res.StatusCode != 400 || ociCode(t, res) != "DIGEST_INVALID" {
		t.Errorf("bad digest: %d", res.StatusCode)
	}

	// Deleting a referrer removes it from the list.
	if st := f.status("DELETE", "/v2/p1/app/manifests/"+digest.FromBytes(sig).String(), org); st != http.StatusAccepted {
		t.Fatalf("delete signature: %d", st)
	}
	if idx, _ := list(""); len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest.FromBytes(sbom) {
		t.Errorf("after delete: %+v", idx)
	}

	// A lost index is rebuilt by the collector from storage.
	if err := f.st.DeleteRegistryRepo(context.Background(), "p1/app"); err != nil {
		t.Fatal(err)
	}
	st, err := f.reg.CollectGarbage(context.Background())
	if err != nil || st.Indexed == 0 {
		t.Fatalf("collect: %+v %v", st, err)
	}
	if idx, _ := list(""); len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest.FromBytes(sbom) {
		t.Errorf("after reindex: %+v", idx)
	}
}
