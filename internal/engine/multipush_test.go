package engine

import (
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// testRegistry is an in-memory registry on loopback (plain HTTP).
func testRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func ociImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: arch, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func descOf(t *testing.T, a interface {
	Digest() (v1.Hash, error)
	Size() (int64, error)
	MediaType() (types.MediaType, error)
}) ocispecs.Descriptor {
	t.Helper()
	d, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := a.Size()
	mt, _ := a.MediaType()
	return ocispecs.Descriptor{MediaType: string(mt), Digest: digest.Digest(d.String()), Size: s}
}

// As the builders leave it after a push by digest: amd64 as a bare image
// manifest, arm64 as an index of its manifest and an attestation manifest.
func TestPushIndex(t *testing.T) {
	reg := testRegistry(t)
	repo := reg + "/team/app"
	amd := ociImage(t, "amd64")
	arm := ociImage(t, "arm64")
	att := ociImage(t, "unknown")
	armDigest, _ := arm.Digest()
	armIdx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": armDigest.String()}}},
	), types.OCIImageIndex)
	amdDigest, _ := amd.Digest()
	if err := remote.Write(mustRef(t, repo+"@"+amdDigest.String()), amd); err != nil {
		t.Fatal(err)
	}
	armIdxDigest, _ := armIdx.Digest()
	if err := remote.WriteIndex(mustRef(t, repo+"@"+armIdxDigest.String()), armIdx); err != nil {
		t.Fatal(err)
	}

	names := []string{repo + ":1", repo + ":latest"}
	desc, err := pushIndex(t.Context(), nil, names, []platformImage{
		{Platform: "linux/amd64", Desc: descOf(t, amd)},
		{Platform: "linux/arm64", Desc: descOf(t, armIdx)},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	if desc.MediaType != string(types.OCIImageIndex) {
		t.Errorf("index media type %q", desc.MediaType)
	}
	for _, n := range names {
		got, err := remote.Index(mustRef(t, n))
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		d, _ := got.Digest()
		if d.String() != desc.Digest.String() {
			t.Errorf("%s is %s, pushIndex reported %s", n, d, desc.Digest)
		}
		im, _ := got.IndexManifest()
		var plats []string
		for _, m := range im.Manifests {
			plats = append(plats, m.Platform.OS+"/"+m.Platform.Architecture+" "+m.Annotations["vnd.docker.reference.type"])
		}
		want := "linux/amd64 ,linux/arm64 ,unknown/unknown attestation-manifest"
		if strings.Join(plats, ",") != want {
			t.Errorf("%s lists %q, want %q", n, strings.Join(plats, ","), want)
		}
		if im.Manifests[0].Digest != amdDigest || im.Manifests[1].Digest != armDigest {
			t.Errorf("%s: children %v", n, im.Manifests)
		}
	}

	// The same platform images, all Docker media types: a Docker manifest list.
	dock, _ := random.Image(64, 1)
	dockDigest, _ := dock.Digest()
	if err := remote.Write(mustRef(t, repo+"@"+dockDigest.String()), dock); err != nil {
		t.Fatal(err)
	}
	d2, err := pushIndex(t.Context(), nil, []string{repo + ":docker"}, []platformImage{{Platform: "linux/amd64", Desc: descOf(t, dock)}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if d2.MediaType != string(types.DockerManifestList) {
		t.Errorf("all-Docker children: index media type %q", d2.MediaType)
	}
}

func TestPushIndexErrors(t *testing.T) {
	reg := testRegistry(t)
	missing := ocispecs.Descriptor{Digest: digest.FromString("never pushed"), MediaType: ocispecs.MediaTypeImageManifest}
	_, err := pushIndex(t.Context(), nil, []string{reg + "/app:1"}, []platformImage{{Platform: "linux/amd64", Desc: missing}}, false)
	if err == nil || !strings.Contains(err.Error(), "linux/amd64") {
		t.Errorf("missing platform image: err = %v", err)
	}
	// Nothing listens here: unavailable, a kind callers may retry.
	_, err = pushIndex(t.Context(), nil, []string{"127.0.0.1:1/app:1"}, []platformImage{{Platform: "linux/amd64", Desc: missing}}, false)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("unreachable registry: err = %v, want ErrUnavailable", err)
	}
	if _, err := pushIndex(t.Context(), nil, nil, nil, false); err == nil {
		t.Errorf("pushIndex with nothing succeeded")
	}
}
