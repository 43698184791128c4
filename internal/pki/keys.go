package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Keys keeps the CAs' key material: a certificate and its key per CA,
// named "root" or "projects/<project id>". The directory (Open's default)
// keeps them in files; Shared keeps them in a store every replica reads.
type Keys interface {
	// Load returns the CA stored under name, or makes one with create,
	// stores it and returns it. Two callers creating the same CA at once
	// both get the one stored first.
	Load(name string, create func() (*x509.Certificate, *ecdsa.PrivateKey, error)) (*x509.Certificate, *ecdsa.PrivateKey, error)
}

// SecretFunc is a shared secret store (cluster.Cluster.Secret): the value
// under name if one was stored, else make's, stored for the others.
type SecretFunc func(ctx context.Context, name string, make func() ([]byte, error)) ([]byte, error)

// Option configures Open.
type Option func(*options)

type options struct {
	secret  SecretFunc
	timeout time.Duration
}

// Shared keeps the CAs in secret (sealed in the store, the same for every
// replica) instead of the directory alone. The first replica to need a CA
// stores the one in its directory if it has one (a single install moved to
// replicas keeps its CA), else a new one; every replica then mirrors the
// stored CA into its directory (RootPath is a file), setting aside a
// different one it had as ca.crt.replaced and ca.key.replaced.
func Shared(secret SecretFunc) Option {
	return func(o *options) { o.secret = secret }
}

// sharedTimeout bounds one CA's round trip to the store: pki's callers
// hold no context (a builder's certificate is issued on its start).
const sharedTimeout = 30 * time.Second

// dirKeys keeps each CA in dir/<name>/ca.crt and ca.key ("root" is dir
// itself): kiln's layout since its first release (doc.go).
type dirKeys struct{ dir string }

func (k dirKeys) path(name string) string {
	if name == rootName {
		return k.dir
	}
	return filepath.Join(k.dir, filepath.FromSlash(name))
}

func (k dirKeys) Load(name string, create func() (*x509.Certificate, *ecdsa.PrivateKey, error)) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	dir := k.path(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	s, err := loadOrCreate(dir, create)
	if err != nil {
		return nil, nil, err
	}
	return s.cert, s.key, nil
}

// read returns the CA in the directory under name; ok is false when it
// has none.
func (k dirKeys) read(name string) (certPEM, keyPEM []byte, ok bool, err error) {
	dir := k.path(name)
	certPEM, err = os.ReadFile(filepath.Join(dir, "ca.crt"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	keyPEM, err = os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, nil, false, err
	}
	return certPEM, keyPEM, true, nil
}

// mirror writes the CA into the directory under name unless it is there
// already, setting aside a different one found there.
func (k dirKeys) mirror(name string, certPEM, keyPEM []byte) error {
	dir := k.path(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	oldCert, oldKey, ok, err := k.read(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if ok && bytes.Equal(oldCert, certPEM) && bytes.Equal(oldKey, keyPEM) {
		return nil
	}
	if ok {
		for _, f := range []string{"ca.crt", "ca.key"} {
			p := filepath.Join(dir, f)
			if err := os.Rename(p, p+".replaced"); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	// The key first: a certificate's presence means the pair is complete
	// (loadOrCreate).
	if err := atomicfile.Write(filepath.Join(dir, "ca.key"), keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "ca.crt"), certPEM, 0o600)
}

// sharedKeys keeps the CAs in a shared secret store, seeded from and
// mirrored into the directory.
type sharedKeys struct {
	secret  SecretFunc
	local   dirKeys
	timeout time.Duration
}

func (k sharedKeys) Load(name string, create func() (*x509.Certificate, *ecdsa.PrivateKey, error)) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), k.timeout)
	defer cancel()
	// make is called on every load, also when a value is stored already
	// (whose it is is decided by the store): it reads the directory's CA,
	// else creates one, cheaply.
	stored, err := k.secret(ctx, "pki/"+name, func() ([]byte, error) {
		certPEM, keyPEM, ok, err := k.local.read(name)
		if err != nil {
			return nil, err
		}
		if ok {
			if _, _, err := parsePair(certPEM, keyPEM); err != nil {
				return nil, fmt.Errorf("%s: %w", k.local.path(name), err)
			}
			return append(certPEM, keyPEM...), nil
		}
		cert, key, err := create()
		if err != nil {
			return nil, err
		}
		keyPEM, err = encodeKey(key)
		if err != nil {
			return nil, err
		}
		return append(encodeCert(cert), keyPEM...), nil
	})
	if err != nil {
		return nil, nil, err
	}
	certPEM, keyPEM, err := splitPair(stored)
	if err != nil {
		return nil, nil, fmt.Errorf("the stored CA: %w", err)
	}
	cert, key, err := parsePair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("the stored CA: %w", err)
	}
	if err := k.local.mirror(name, certPEM, keyPEM); err != nil {
		return nil, nil, fmt.Errorf("mirror the shared CA: %w", err)
	}
	return cert, key, nil
}

// splitPair cuts a stored "certificate PEM, key PEM" in two.
func splitPair(b []byte) (certPEM, keyPEM []byte, err error) {
	i := bytes.Index(b, []byte("-----END CERTIFICATE-----"))
	if i < 0 {
		return nil, nil, fmt.Errorf("no certificate: %w", errdefs.ErrInvalid)
	}
	i += len("-----END CERTIFICATE-----")
	if i < len(b) && b[i] == '\n' {
		i++
	}
	return b[:i:i], b[i:], nil
}

// parsePair parses a CA's certificate and key and checks they belong
// together.
func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("the key does not match the certificate: %w", errdefs.ErrFailedPrecondition)
	}
	return cert, key, nil
}

var (
	_ Keys = dirKeys{}
	_ Keys = sharedKeys{}
)
