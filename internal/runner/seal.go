package runner

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kiln-dev/kiln/internal/seal"
)

// sealer keeps a source build's secrets encrypted at rest (internal/seal,
// with the server's key) from CreateBuild until the build ends, when they
// are dropped. The build id is the additional data, so a sealed value
// moved to another build does not open.
type sealer struct {
	key []byte
}

func newSealer(key []byte) (*sealer, error) {
	if len(key) < seal.KeySize {
		return nil, errors.New("secrets key must be at least 32 bytes")
	}
	return &sealer{key: key[:seal.KeySize]}, nil
}

func (s *sealer) seal(buildID string, secrets map[string]string) (string, error) {
	if len(secrets) == 0 {
		return "", nil
	}
	plain, err := json.Marshal(secrets)
	if err != nil {
		return "", err
	}
	return seal.Seal(s.key, buildID, plain)
}

func (s *sealer) open(buildID, sealed string) (map[string][]byte, error) {
	if sealed == "" {
		return nil, nil
	}
	plain, err := seal.Open(s.key, buildID, sealed)
	switch {
	case errors.Is(err, seal.ErrCorrupt):
		return nil, errors.New("sealed secrets are corrupt")
	case err != nil:
		return nil, fmt.Errorf("sealed secrets do not open with this server's key: %w", err)
	}
	var m map[string]string
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out, nil
}
