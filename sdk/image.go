package sdk

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	bkclient "github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/retry"
)

// readIndex finds build buildID's image in kiln's registry and returns it
// as an index, with its digest there. The server answers where the image
// is and a pull token for it (GetPullInfo, as `kiln pull` asks): the
// build's own token stops working when the build ends.
func readIndex(ctx context.Context, cfg client.Config, buildID string) (v1.ImageIndex, v1.Hash, error) {
	info, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*pullInfo, error) {
		res, err := cfg.PullInfo(ctx, buildID)
		if err != nil {
			return nil, err
		}
		return &pullInfo{ref: res.Reference, user: res.Username, pass: res.Password}, nil
	})
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("sdk: where build %s was saved: %w", buildID, err)
	}
	ref, err := name.ParseReference(info.ref)
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("sdk: the server's image name %q: %w", info.ref, err)
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: info.user, Password: info.pass})}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("sdk: read build %s's image %s from kiln's registry: %w", buildID, ref, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, v1.Hash{}, fmt.Errorf("sdk: image index %s: %w", ref, err)
		}
		return idx, desc.Digest, nil
	}
	img, err := desc.Image()
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("sdk: image %s: %w", ref, err)
	}
	idx, err := wrapImage(img)
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("sdk: image %s: %w", ref, err)
	}
	return idx, desc.Digest, nil
}

type pullInfo struct{ ref, user, pass string }

// wrapImage makes an OCI image index of one image, with the image's
// platform in its descriptor.
func wrapImage(img v1.Image) (v1.ImageIndex, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	add := mutate.IndexAddendum{Add: img}
	if p := cf.Platform(); p != nil {
		add.Descriptor.Platform = p
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), add), nil
}

// buildxMetadata is the --metadata-file JSON of a finished build, written
// as the engine writes it.
func buildxMetadata(resp *bkclient.SolveResponse, projectID, buildID string) (json.RawMessage, error) {
	dt, err := engine.BuildMetadata(resp, engine.BuildRef{ProjectID: projectID, BuildID: buildID})
	if err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	return dt, nil
}
