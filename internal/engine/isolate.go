package engine

import (
	"context"
	"time"

	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/secrets"
	"github.com/moby/buildkit/session/secrets/secretsprovider"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// ServerSide makes a prepared request safe to run on kiln's server for
// someone else's build (source builds): the builder authenticates to
// registries only with the save credentials (never with the Docker
// credentials of the user kiln runs as), and secrets must be values in
// memory, never files or environment variables of the server. Call it
// before the solve.
func (r *Request) ServerSide() { r.serverSide = true }

// secretProvider serves the build's secrets: values from memory, the
// others read from their file or environment variable when the builder
// asks.
func (r *Request) secretProvider() (session.Attachable, error) {
	if r.serverSide && len(r.secrets) > 0 {
		return nil, errdefs.Invalidf("secret %q: a build on the server takes secrets as values only", r.secrets[0].ID)
	}
	files, err := secretsprovider.NewStore(r.secrets)
	if err != nil {
		return nil, errdefs.InvalidWrapf(err, "--secret")
	}
	return secretsprovider.NewSecretProvider(secretStore{values: r.secretValues, files: files}), nil
}

// secretStore looks a secret up among the values, then the files and
// environment variables.
type secretStore struct {
	values map[string][]byte
	files  secrets.SecretStore
}

func (s secretStore) GetSecret(ctx context.Context, id string) ([]byte, error) {
	if v, ok := s.values[id]; ok {
		return v, nil
	}
	return readBounded(ctx, id, secretReadTimeout, s.files.GetSecret)
}

// secretReadTimeout bounds reading one secret from its file or variable. A
// source that never answers (a FIFO nobody writes, a hung network file
// system) would otherwise hold the build's RUN step, and the build, for
// ever, while the client keeps reporting it healthy.
var secretReadTimeout = 30 * time.Second

// readBounded is get, given up after d: the read's goroutine is left to
// finish (or not) on its own; the client process ends soon after the
// build does.
func readBounded(ctx context.Context, id string, d time.Duration, get func(context.Context, string) ([]byte, error)) ([]byte, error) {
	type answer struct {
		b   []byte
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		b, err := get(ctx, id)
		ch <- answer{b, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case a := <-ch:
		return a.b, a.err
	case <-t.C:
		return nil, errdefs.Wrapf(errdefs.ErrUnavailable, nil, "secret %q: reading its source did not finish within %s (a pipe nobody writes to? a hung file system?)", id, d)
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// dockerConfig is the Docker configuration the builder's registry
// requests authenticate with: the user's, or an empty one on the server.
func (r *Request) dockerConfig(load func() *configfile.ConfigFile) *configfile.ConfigFile {
	if r.serverSide {
		return layerDockerConfig(configfile.New(""), r.registryAuth)
	}
	return layerDockerConfig(load(), r.registryAuth)
}

// baseKeychain is what the client itself falls back to for hosts without
// a save credential: none on the server.
func (r *Request) baseKeychain() authn.Keychain {
	if r.serverSide {
		return authn.NewMultiKeychain()
	}
	return authn.DefaultKeychain
}
