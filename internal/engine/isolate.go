package engine

import (
	"maps"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
)

// ServerSide makes a prepared request safe to run on kiln's server for
// someone else's build (source builds): the builder authenticates to
// registries only with creds (never with the Docker credentials of the
// user kiln runs as), and secrets come from values in memory instead of
// files or environment variables of the server. Call it before the solve.
func (r *Request) ServerSide(secrets map[string][]byte) {
	r.serverSide = true
	r.secretValues = maps.Clone(secrets)
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
