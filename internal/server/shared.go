package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/blob"
)

// dataSecret is the 32-byte key kept at path in the data directory
// (secrets.key, blob.key). With a shared cluster it is the one in the
// store, which the first replica seeds from its file (a single install
// moved to replicas keeps the secrets it sealed); the file is then made to
// hold it, a different one set aside as path.replaced, so the directory
// stays consistent should the install go back to one replica.
func (s *Server) dataSecret(ctx context.Context, name, path string) ([]byte, error) {
	if !s.cluster.Shared() {
		return blob.LoadOrCreateSecret(path)
	}
	v, err := s.cluster.Secret(ctx, name, func() ([]byte, error) {
		if _, err := os.Stat(path); err == nil {
			return blob.LoadOrCreateSecret(path) // checks its mode and size
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		return b, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	old, err := os.ReadFile(path)
	if err == nil && bytes.Equal(old, v) {
		return v, nil
	}
	if err == nil {
		if err := os.Rename(path, path+".replaced"); err != nil {
			return nil, fmt.Errorf("%s: set the replica's own aside: %w", filepath.Base(path), err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	if err := atomicfile.Write(path, v, 0o600); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return v, nil
}
