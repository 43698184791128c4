package sdk

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// A plain manifest (a single-platform image pushed without attestations)
// comes back as an OCI index of one, with the image's platform.
func TestWrapImage(t *testing.T) {
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture, cf.Variant = "linux", "arm", "v7"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	idx, err := wrapImage(img)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if im.MediaType != types.OCIImageIndex || len(im.Manifests) != 1 || im.Manifests[0].Digest != want ||
		im.Manifests[0].Platform == nil || im.Manifests[0].Platform.String() != "linux/arm/v7" {
		t.Fatalf("index %+v", im)
	}
	if _, err := idx.Image(want); err != nil {
		t.Fatal(err)
	}
}
