package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/seal"
)

// keySize is the cluster key's size: AES-256.
const keySize = seal.KeySize

// LoadKey reads the cluster key file: 32 random bytes written as 64 hex
// digits (`openssl rand -hex 32`), the same file on every replica. It must
// be the owner's only.
func LoadKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("cluster key %s is readable by others (mode %o); chmod 600 it: %w", path, fi.Mode().Perm(), errdefs.ErrInvalid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != keySize {
		return nil, fmt.Errorf("cluster key %s: want %d hex digits (make one with: openssl rand -hex 32 > %s): %w", path, 2*keySize, path, errdefs.ErrInvalid)
	}
	return key, nil
}

// Secret returns the shared secret name: the one in the store if a replica
// made it, else make's, stored for the others. Values are sealed with the
// cluster key (AES-256-GCM, the name as associated data, so one secret's
// value cannot be passed off as another's). Without a key (a single
// replica) it is an error: the caller keeps its secret in its data
// directory instead.
func (c *Cluster) Secret(ctx context.Context, name string, make func() ([]byte, error)) ([]byte, error) {
	if !c.Shared() {
		return nil, errors.New("cluster: no cluster key, so no shared secrets")
	}
	v, err := make()
	if err != nil {
		return nil, err
	}
	sealed, err := seal.Seal(c.cfg.Key, name, v)
	if err != nil {
		return nil, err
	}
	stored, err := c.store.PutSecretIfAbsent(ctx, name, sealed)
	if err != nil {
		return nil, fmt.Errorf("shared secret %s: %w", name, err)
	}
	out, err := seal.Open(c.cfg.Key, name, stored)
	if err != nil {
		return nil, fmt.Errorf("shared secret %s: %w (is every replica given the same --cluster-key-file?)", name, err)
	}
	return out, nil
}

// idRe is what a replica id may be: it names the replica in logs, the
// store and build records.
var idRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ReplicaID returns this replica's id: flag if given (checked), else the
// one kept in dataDir/replica-id, made on first start. It is stable across
// restarts, so a restarted replica settles its own builds (and not another
// replica's) and keeps its builders' placements.
func ReplicaID(dataDir, flag string) (string, error) {
	if flag != "" {
		if !idRe.MatchString(flag) {
			return "", fmt.Errorf("--replica-id %q: use 1-63 lowercase letters, digits and dashes: %w", flag, errdefs.ErrInvalid)
		}
		return flag, nil
	}
	path := filepath.Join(dataDir, "replica-id")
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !idRe.MatchString(id) {
			return "", fmt.Errorf("%s holds %q, not a replica id; remove it to make a new one: %w", path, id, errdefs.ErrInvalid)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("replica id: %w", err)
	}
	host, _ := os.Hostname()
	host = strings.Trim(regexp.MustCompile(`[^a-z0-9-]+`).ReplaceAllString(strings.ToLower(host), "-"), "-")
	if len(host) > 40 {
		host = host[:40]
	}
	suffix := make([]byte, 4)
	rand.Read(suffix)
	id := strings.TrimPrefix(host+"-"+hex.EncodeToString(suffix), "-")
	if err := atomicfile.Write(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("replica id: %w", err)
	}
	return id, nil
}
