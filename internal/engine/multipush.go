package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/errdefs"

	"github.com/kiln-dev/kiln/internal/platform"
)

// platformImage is what one platform's builder pushed by digest: its image
// manifest, or an index of that manifest and its attestation manifests.
type platformImage struct {
	Platform string
	Desc     ocispecs.Descriptor
}

// repositories returns the distinct repositories (names without tag or
// digest) of an exporter's name= attribute, in order: what a push by
// digest needs.
func repositories(attr string) ([]string, error) {
	var out []string
	for n := range strings.SplitSeq(attr, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return nil, fmt.Errorf("image name %q: %w", n, err)
		}
		if repo := named.Name(); !slices.Contains(out, repo) {
			out = append(out, repo)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no image name to push to (give -t NAME)")
	}
	return out, nil
}

// pushIndex composes the image index of a multi-platform push — every
// platform's manifest and attestation manifests, which the builders
// already pushed by digest to each repository — and pushes it under every
// name in names (tagged references). It talks to the registries from the
// client, with kc's credentials — the user's Docker credentials
// (~/.docker/config.json and credential helpers) when kc is nil, and
// --save's over them (Request.keychain); loopback registries are plain HTTP, and insecure
// (registry.insecure=true) allows plain HTTP anywhere. Only the index is
// uploaded: go-containerregistry checks each child with a HEAD and, as the
// builders pushed every child to every repository, finds it there.
// Temporary registry errors are retried by go-containerregistry itself.
func pushIndex(ctx context.Context, kc authn.Keychain, names []string, imgs []platformImage, insecure bool) (ocispecs.Descriptor, error) {
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	var nameOpts []name.Option
	if insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)}
	if len(names) == 0 || len(imgs) == 0 {
		return ocispecs.Descriptor{}, fmt.Errorf("--push: nothing to push")
	}
	first, err := name.ParseReference(names[0], nameOpts...)
	if err != nil {
		return ocispecs.Descriptor{}, errdefs.InvalidWrapf(err, "--push: image name %q", names[0])
	}

	var adds []mutate.IndexAddendum
	allDocker := true
	seen := map[v1.Hash]bool{}
	add := func(a mutate.Appendable, d v1.Descriptor) {
		if seen[d.Digest] {
			return
		}
		seen[d.Digest] = true
		if d.MediaType != types.DockerManifestSchema2 {
			allDocker = false
		}
		adds = append(adds, mutate.IndexAddendum{Add: a, Descriptor: d})
	}
	for _, img := range imgs {
		ref := first.Context().Digest(img.Desc.Digest.String())
		desc, err := remote.Get(ref, opts...)
		if err != nil {
			return ocispecs.Descriptor{}, registryError(err, "--push: reading back %s's image %s", img.Platform, ref)
		}
		switch {
		case desc.MediaType.IsIndex():
			idx, err := desc.ImageIndex()
			if err != nil {
				return ocispecs.Descriptor{}, registryError(err, "--push: %s's image index %s", img.Platform, ref)
			}
			im, err := idx.IndexManifest()
			if err != nil {
				return ocispecs.Descriptor{}, registryError(err, "--push: %s's image index %s", img.Platform, ref)
			}
			for _, child := range im.Manifests {
				var a mutate.Appendable
				if child.MediaType.IsIndex() {
					a, err = idx.ImageIndex(child.Digest)
				} else {
					a, err = idx.Image(child.Digest)
				}
				if err != nil {
					return ocispecs.Descriptor{}, registryError(err, "--push: %s's manifest %s", img.Platform, child.Digest)
				}
				add(a, child)
			}
		case desc.MediaType.IsImage():
			im, err := desc.Image()
			if err != nil {
				return ocispecs.Descriptor{}, registryError(err, "--push: %s's image %s", img.Platform, ref)
			}
			p, err := platform.Parse(img.Platform)
			if err != nil {
				return ocispecs.Descriptor{}, err
			}
			d := desc.Descriptor
			d.Platform = &v1.Platform{OS: p.OS, Architecture: p.Arch, Variant: p.Variant}
			d.Annotations = nil
			add(im, d)
		default:
			return ocispecs.Descriptor{}, fmt.Errorf("--push: %s's pushed image %s has unexpected media type %q", img.Platform, ref, desc.MediaType)
		}
	}

	// A Docker manifest list when every child is a Docker manifest (so
	// old clients keep working), an OCI index otherwise — what BuildKit
	// makes for the same build.
	mt := types.OCIImageIndex
	if allDocker {
		mt = types.DockerManifestList
	}
	// Images first, attestations after them, as in mergeOCILayouts.
	slices.SortStableFunc(adds, func(a, b mutate.IndexAddendum) int {
		return boolRank(isAttestation(a.Annotations)) - boolRank(isAttestation(b.Annotations))
	})
	index := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), mt)
	for _, n := range names {
		ref, err := name.ParseReference(n, nameOpts...)
		if err != nil {
			return ocispecs.Descriptor{}, errdefs.InvalidWrapf(err, "--push: image name %q", n)
		}
		if err := remote.WriteIndex(ref, index, opts...); err != nil {
			return ocispecs.Descriptor{}, registryError(err, "--push: pushing the image index to %s", ref)
		}
	}
	dgst, err := index.Digest()
	if err != nil {
		return ocispecs.Descriptor{}, err
	}
	size, err := index.Size()
	if err != nil {
		return ocispecs.Descriptor{}, err
	}
	return ocispecs.Descriptor{MediaType: string(mt), Digest: digestOf(dgst), Size: size}, nil
}

// registryError wraps a registry failure with its kind: refused
// credentials, a missing repository, or — for a network failure or a
// status the registry marks temporary (5xx, 429) — unavailable.
func registryError(err error, format string, args ...any) error {
	var kind error
	var terr *transport.Error
	var nerr net.Error
	switch {
	case errors.As(err, &terr) && terr.StatusCode == http.StatusUnauthorized:
		kind = errdefs.ErrUnauthenticated
	case errors.As(err, &terr) && terr.StatusCode == http.StatusForbidden:
		kind = errdefs.ErrPermission
	case errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound:
		kind = errdefs.ErrNotFound
	case errors.As(err, &terr) && terr.Temporary(),
		errors.As(err, &nerr), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		kind = errdefs.ErrUnavailable
	default:
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return errdefs.Wrapf(kind, err, format, args...)
}

// digestOf converts go-containerregistry's hash to a digest.
func digestOf(h v1.Hash) digest.Digest { return digest.Digest(h.String()) }
