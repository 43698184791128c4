package engine

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	dockerclient "github.com/moby/moby/client"
	"github.com/moby/moby/client/pkg/jsonmessage"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// PullOptions say what [PullIntoDocker] pulls and how it names the result.
type PullOptions struct {
	// Ref is the image to pull (a tagged or digested reference).
	Ref string
	// Username and Password are the registry credentials, passed to the
	// engine as its registry auth (X-Registry-Auth) for this pull only.
	Username, Password string
	// Platform picks one platform of a multi-platform image (zero is the
	// engine's own).
	Platform platform.Platform
	// Names tag the pulled image; when given, Ref's own tag is removed
	// afterwards so the image carries only the names the user asked for.
	Names []string
	// DockerContext names a Docker context; "" resolves the engine as the
	// docker CLI does (DOCKER_HOST, DOCKER_CONTEXT, the current context).
	DockerContext string
	// Progress receives the engine's pull progress, rendered as the docker
	// CLI renders it (a live display on a terminal, lines otherwise).
	Progress io.Writer
}

// CheckImageNames validates names to tag an image with (-t), before
// anything is pulled or pushed: each must be a tagged or bare name (which
// means :latest), not a digest.
func CheckImageNames(flag string, names []string) error {
	for _, n := range names {
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return errdefs.InvalidWrapf(err, "%s %q", flag, clip(n, 200))
		}
		if _, ok := named.(reference.Digested); ok {
			return errdefs.Invalidf("%s %q: a tag cannot be a digest; give NAME[:TAG]", flag, clip(n, 200))
		}
	}
	return nil
}

// PullIntoDocker pulls o.Ref into the local Docker engine with o's
// credentials, tags it with o.Names and returns the image ID. An
// unreachable engine is an error wrapping errdefs.ErrUnavailable; a pull
// the engine or registry refused carries the engine's message.
func PullIntoDocker(ctx context.Context, o PullOptions) (string, error) {
	if err := CheckImageNames("-t", o.Names); err != nil {
		return "", err
	}
	named, err := reference.ParseNormalizedNamed(o.Ref)
	if err != nil {
		return "", errdefs.InvalidWrapf(err, "image %q", clip(o.Ref, 200))
	}
	e, err := connectDocker(ctx, o.DockerContext, "kiln pull")
	if err != nil {
		return "", err
	}
	defer e.api.Close()
	auth, err := authconfig.Encode(registry.AuthConfig{Username: o.Username, Password: o.Password, ServerAddress: reference.Domain(named)})
	if err != nil {
		return "", err
	}
	pull := dockerclient.ImagePullOptions{RegistryAuth: auth}
	if !o.Platform.IsZero() {
		pull.Platforms = []ocispecs.Platform{o.Platform.OCI()}
	}
	body, err := e.api.ImagePull(ctx, o.Ref, pull)
	if err != nil {
		return "", fmt.Errorf("the Docker engine at %s could not pull %s: %w", e.host, o.Ref, err)
	}
	defer body.Close()
	out := o.Progress
	if out == nil {
		out = io.Discard
	}
	var fd uintptr
	tty := isTerminal(out)
	if f, ok := out.(interface{ Fd() uintptr }); ok {
		fd = f.Fd()
	}
	if err := jsonmessage.DisplayJSONMessagesStream(body, out, fd, tty, nil); err != nil {
		var jerr *jsonstream.Error
		if errors.As(err, &jerr) {
			return "", fmt.Errorf("the Docker engine at %s could not pull %s: %s", e.host, o.Ref, jerr.Message)
		}
		return "", errdefs.Wrapf(errdefs.ErrUnavailable, err, "pulling %s into the Docker engine at %s", o.Ref, e.host)
	}
	inspect, err := e.api.ImageInspect(ctx, o.Ref)
	if err != nil {
		return "", fmt.Errorf("the Docker engine at %s pulled %s but cannot find it: %w", e.host, o.Ref, err)
	}
	keep := len(o.Names) == 0
	for _, n := range o.Names {
		if _, err := e.api.ImageTag(ctx, dockerclient.ImageTagOptions{Source: inspect.ID, Target: n}); err != nil {
			return "", fmt.Errorf("tagging the pulled image as %s: %w", n, err)
		}
		if sameName(n, o.Ref) {
			keep = true
		}
	}
	if !keep {
		// Untag only: the image stays, under the user's names.
		if _, err := e.api.ImageRemove(ctx, o.Ref, dockerclient.ImageRemoveOptions{PruneChildren: false}); err != nil {
			return "", fmt.Errorf("removing the pull reference %s: %w", o.Ref, err)
		}
	}
	return inspect.ID, nil
}

// sameName reports whether two references name the same tag.
func sameName(a, b string) bool {
	na, errA := reference.ParseNormalizedNamed(a)
	nb, errB := reference.ParseNormalizedNamed(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return reference.TagNameOnly(na).String() == reference.TagNameOnly(nb).String()
}
