package engine

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// authRegistry is an in-memory registry that wants basic auth user:pass.
func authRegistry(t *testing.T, user, pass string) string {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// A two-platform index with an attestation manifest is copied registry to
// registry with the same digest and every child intact.
func TestCopyImageIndex(t *testing.T) {
	src := authRegistry(t, "x-token", "pull-token")
	dst := testRegistry(t)
	amd, arm, att := layeredImage(t, "amd64"), layeredImage(t, "arm64"), layeredImage(t, "unknown")
	amdD, armD, attD := ggcrDesc(t, amd), ggcrDesc(t, arm), ggcrDesc(t, att)
	amdD.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	armD.Platform = &v1.Platform{OS: "linux", Architecture: "arm64"}
	attD.Platform = &v1.Platform{OS: "unknown", Architecture: "unknown"}
	attD.Annotations = map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": amdD.Digest.String()}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: amdD}, mutate.IndexAddendum{Add: arm, Descriptor: armD},
		mutate.IndexAddendum{Add: att, Descriptor: attD}), types.OCIImageIndex)
	srcAuth := &authn.Basic{Username: "x-token", Password: "pull-token"}
	if err := remote.WriteIndex(mustRef(t, src+"/proj:build1"), idx, remote.WithAuth(srcAuth)); err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()

	var progress bytes.Buffer
	got, err := CopyImage(t.Context(), CopyOptions{Source: src + "/proj:build1", SourceAuth: srcAuth,
		Dests: []string{dst + "/app:1", dst + "/other/app:2"}, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if got != want.String() {
		t.Errorf("CopyImage digest = %s, want %s", got, want)
	}
	for _, d := range []string{dst + "/app:1", dst + "/other/app:2"} {
		desc, err := remote.Get(mustRef(t, d))
		if err != nil || desc.Digest != want {
			t.Fatalf("%s: %v %v", d, desc, err)
		}
		copied, _ := desc.ImageIndex()
		im, _ := copied.IndexManifest()
		if len(im.Manifests) != 3 || im.Manifests[2].Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
			t.Errorf("%s: children %+v", d, im.Manifests)
		}
		for _, m := range im.Manifests {
			img, err := copied.Image(m.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if err := validateLayers(img); err != nil {
				t.Errorf("%s: %s: %v", d, m.Digest, err)
			}
		}
	}
	if !strings.Contains(progress.String(), "pushed "+dst+"/app:1 ("+want.String()+")") {
		t.Errorf("progress:\n%s", progress.String())
	}

	// A single image copies too.
	if err := remote.Write(mustRef(t, src+"/proj:single"), amd, remote.WithAuth(srcAuth)); err != nil {
		t.Fatal(err)
	}
	if got, err := CopyImage(t.Context(), CopyOptions{Source: src + "/proj:single", SourceAuth: srcAuth, Dests: []string{dst + "/single:1"}}); err != nil || got != amdD.Digest.String() {
		t.Errorf("single image: %s, %v", got, err)
	}
}

// layeredImage is a random OCI image for arch whose layers really exist
// (its config keeps the layers' diff IDs).
func layeredImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture = "linux", arch
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
}

func ggcrDesc(t *testing.T, img v1.Image) v1.Descriptor {
	t.Helper()
	d, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	return *d
}

func validateLayers(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func TestCopyImageErrors(t *testing.T) {
	src := authRegistry(t, "x-token", "pull-token")
	dst := testRegistry(t)
	good := &authn.Basic{Username: "x-token", Password: "pull-token"}
	if err := remote.Write(mustRef(t, src+"/proj:b"), layeredImage(t, "amd64"), remote.WithAuth(good)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{nil, {""}, {"UPPER/case:1"}, {dst + "/app@sha256:abc"}, {"a b:1"}, {dst + "/app:1", "bad::tag"}} {
		if _, err := CopyImage(t.Context(), CopyOptions{Source: src + "/proj:b", SourceAuth: good, Dests: bad}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("dests %q: %v", bad, err)
		}
	}
	if _, err := CopyImage(t.Context(), CopyOptions{Source: src + "/proj:b", SourceAuth: &authn.Basic{Username: "x-token", Password: "wrong"}, Dests: []string{dst + "/ab:1"}}); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("bad source credentials: %v", err)
	}
	if _, err := CopyImage(t.Context(), CopyOptions{Source: src + "/proj:missing", SourceAuth: good, Dests: []string{dst + "/ab:1"}}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing source: %v", err)
	}
	_, err := CopyImage(t.Context(), CopyOptions{Source: src + "/proj:b", SourceAuth: good, Dests: []string{"127.0.0.1:1/app:1"}})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "127.0.0.1:1/app:1") {
		t.Errorf("unreachable destination: %v", err)
	}
}

func TestCheckImageNamesAndPlatform(t *testing.T) {
	if err := CheckImageNames("-t", []string{"saved:1", "registry.example.com/a/b", "localhost:5000/x:y"}); err != nil {
		t.Errorf("valid names: %v", err)
	}
	for _, bad := range []string{"", "UPPER", "a:b:c", "x@sha256:" + strings.Repeat("a", 64), "a b", strings.Repeat("a", 300) + ":x:"} {
		if err := CheckImageNames("-t", []string{bad}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	// kiln pull's --platform is parsed by platform.Parse.
	for _, ok := range []string{"linux/amd64", "linux/arm64/v8", "linux/arm/v7"} {
		if _, err := platform.Parse(ok); err != nil {
			t.Errorf("platform %q: %v", ok, err)
		}
	}
	for _, bad := range []string{"linux/amd64,linux/arm64", "not a platform!", "/"} {
		if _, err := platform.Parse(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("platform %q accepted", bad)
		}
	}
}

func TestImageDigest(t *testing.T) {
	src := authRegistry(t, "x-token", "pull-token")
	good := &authn.Basic{Username: "x-token", Password: "pull-token"}
	img := layeredImage(t, "amd64")
	if err := remote.Write(mustRef(t, src+"/proj:b"), img, remote.WithAuth(good)); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got, err := ImageDigest(t.Context(), src+"/proj:b", good); err != nil || got != want.String() {
		t.Errorf("ImageDigest = %s, %v; want %s", got, err, want)
	}
	if _, err := ImageDigest(t.Context(), src+"/proj:nope", good); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if _, err := ImageDigest(t.Context(), src+"/proj:b", nil); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("anonymous: %v", err)
	}
	if _, err := ImageDigest(t.Context(), "127.0.0.1:1/proj:b", good); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("unreachable: %v", err)
	}
	if _, err := ImageDigest(t.Context(), "NOT A REF", good); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("malformed: %v", err)
	}
}
