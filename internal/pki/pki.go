package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

const (
	rootValidity    = 20 * 365 * 24 * time.Hour
	projectValidity = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore of every issued certificate, so a peer
	// whose clock runs a little behind kiln's does not reject a fresh one.
	clockSkew = time.Minute
)

var projectIDRe = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// ValidProjectID reports whether id can name a project CA (and a directory):
// 1 to 64 lowercase letters, digits or '-'.
func ValidProjectID(id string) bool { return projectIDRe.MatchString(id) }

// Authority is the root CA plus a cache of the CAs it signed (projects',
// the builder clients'). It is safe for concurrent use.
type Authority struct {
	dir  string
	keys Keys
	root *signer

	// mu serializes loading/creating those CAs and guards projects, keyed
	// by their Keys name ("projects/<id>", "builder-clients").
	mu       sync.Mutex
	projects map[string]*signer
}

// signer is a CA certificate with its key.
type signer struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// rootName names the root CA in Keys.
const rootName = "root"

// Open loads the root CA from dir (ca.crt, ca.key), creating dir and the root
// on first use; with Shared, from the shared store (keys.go).
func Open(dir string, opts ...Option) (*Authority, error) {
	if dir == "" {
		return nil, fmt.Errorf("pki: empty directory: %w", errdefs.ErrInvalid)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	o := options{timeout: sharedTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	var keys Keys = dirKeys{dir: dir}
	if o.secret != nil {
		keys = sharedKeys{secret: o.secret, local: dirKeys{dir: dir}, timeout: o.timeout}
	}
	root, err := load(keys, rootName, func() (*x509.Certificate, *ecdsa.PrivateKey, error) {
		key, err := newKey()
		if err != nil {
			return nil, nil, err
		}
		now := time.Now()
		tmpl := &x509.Certificate{
			Subject:               pkix.Name{CommonName: "kiln root CA", Organization: []string{"kiln"}},
			NotBefore:             now.Add(-clockSkew),
			NotAfter:              now.Add(rootValidity),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			// The root signs only project CAs, which sign only leaves.
			MaxPathLen: 1,
		}
		cert, err := sign(tmpl, key, nil, nil)
		return cert, key, err
	})
	if err != nil {
		return nil, fmt.Errorf("pki: root CA in %s: %w", dir, err)
	}
	return &Authority{dir: dir, keys: keys, root: root, projects: map[string]*signer{}}, nil
}

// load is keys.Load as a signer.
func load(keys Keys, name string, create func() (*x509.Certificate, *ecdsa.PrivateKey, error)) (*signer, error) {
	cert, key, err := keys.Load(name, create)
	if err != nil {
		return nil, err
	}
	return &signer{cert: cert, key: key, certPEM: encodeCert(cert)}, nil
}

// RootPEM returns the PEM of the root CA. Nothing kiln runs trusts the root
// directly (builders trust project CAs); it is exposed for inspection.
func (a *Authority) RootPEM() []byte { return append([]byte(nil), a.root.certPEM...) }

// ProjectCA returns the PEM of the project's CA, an intermediate signed by the
// root and persisted under dir/projects/<projectID>/, created on first use.
func (a *Authority) ProjectCA(projectID string) (certPEM []byte, err error) {
	s, err := a.project(projectID)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), s.certPEM...), nil
}

// IssueServer signs a server certificate for a builder of the project with
// the project CA: DNS SAN serverName, IP SANs ips, valid for ttl.
func (a *Authority) IssueServer(projectID, serverName string, ips []net.IP, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if serverName == "" {
		return nil, nil, fmt.Errorf("pki: empty server name: %w", errdefs.ErrInvalid)
	}
	return a.issue(projectID, ttl, x509.Certificate{
		Subject:     pkix.Name{CommonName: serverName, OrganizationalUnit: []string{projectID}},
		DNSNames:    []string{serverName},
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// RootPath is the file holding the root CA's certificate: what a client
// trusts to reach `kiln serve --tls auto` (SSL_CERT_FILE), and what builders
// trust to reach kiln's registry over TLS.
func (a *Authority) RootPath() string { return filepath.Join(a.dir, "ca.crt") }

// IssueControlPlane signs kiln serve's own TLS server certificate with the
// root CA: DNS SANs names, IP SANs ips, valid for ttl. Builder certificates
// come from project CAs instead, so a project's CA can never vouch for the
// control plane, and the root vouches for nothing a build holds a key to.
func (a *Authority) IssueControlPlane(names []string, ips []net.IP, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(names) == 0 && len(ips) == 0 {
		return nil, nil, fmt.Errorf("pki: control plane certificate without names: %w", errdefs.ErrInvalid)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("pki: ttl %s: %w", ttl, errdefs.ErrInvalid)
	}
	key, err := newKey()
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	now := time.Now()
	cn := "kiln control plane"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"kiln"}},
		DNSNames:    names,
		IPAddresses: ips,
		NotBefore:   now.Add(-clockSkew),
		NotAfter:    now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(a.root.cert.NotAfter) {
		tmpl.NotAfter = a.root.cert.NotAfter
	}
	cert, err := sign(tmpl, key, a.root.cert, a.root.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: control plane certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	return encodeCert(cert), keyPEM, nil
}

// IssueClient signs a client certificate (ExtKeyUsageClientAuth) with the
// project CA: CN=commonName, OU=projectID, valid for ttl. Only the project's
// builders accept it.
func (a *Authority) IssueClient(projectID, commonName string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, fmt.Errorf("pki: empty common name: %w", errdefs.ErrInvalid)
	}
	return a.issue(projectID, ttl, x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName, OrganizationalUnit: []string{projectID}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// issue fills in the validity and key of tmpl and signs it with the project
// CA. The returned certificate PEM holds the leaf only: peers trust the
// project CA itself, so no chain is needed.
func (a *Authority) issue(projectID string, ttl time.Duration, tmpl x509.Certificate) (certPEM, keyPEM []byte, err error) {
	ca, err := a.project(projectID)
	if err != nil {
		return nil, nil, err
	}
	certPEM, keyPEM, err = a.issueWith(ca, ttl, tmpl)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue for project %q: %w", projectID, err)
	}
	return certPEM, keyPEM, nil
}

// issueWith is issue with the CA ca.
func (a *Authority) issueWith(ca *signer, ttl time.Duration, tmpl x509.Certificate) (certPEM, keyPEM []byte, err error) {
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("pki: ttl %s: %w", ttl, errdefs.ErrInvalid)
	}
	key, err := newKey()
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	now := time.Now()
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.Add(ttl)
	// A leaf outliving its issuer would fail verification early anyway;
	// clamping keeps NotAfter honest.
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	cert, err := sign(&tmpl, key, ca.cert, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	return encodeCert(cert), keyPEM, nil
}

// project returns the project's CA, loading or creating it once.
func (a *Authority) project(projectID string) (*signer, error) {
	if !ValidProjectID(projectID) {
		return nil, fmt.Errorf("pki: project id %q: %w", projectID, errdefs.ErrInvalid)
	}
	s, err := a.intermediate("projects/"+projectID, "kiln project "+projectID+" CA", projectID)
	if err != nil {
		return nil, fmt.Errorf("pki: project %q CA: %w", projectID, err)
	}
	return s, nil
}

// builderClientsName names the CA of kiln's own certificates to builders
// it reaches over the network (BuilderClientCA).
const builderClientsName = "builder-clients"

// BuilderClientCA returns the PEM of the CA whose client certificates
// builders away from kiln's machine (Kubernetes pods) accept, and no
// other: only kiln itself holds its certificates (IssueBuilderClient).
// Builds' certificates chain to their project's CA, not to this one, so a
// build cannot talk to a builder pod past kiln's gateway.
func (a *Authority) BuilderClientCA() ([]byte, error) {
	s, err := a.intermediate(builderClientsName, "kiln builder clients CA", "")
	if err != nil {
		return nil, fmt.Errorf("pki: builder clients CA: %w", err)
	}
	return append([]byte(nil), s.certPEM...), nil
}

// IssueBuilderClient signs kiln's own client certificate to builders away
// from its machine (BuilderClientCA), CN=commonName, valid for ttl.
func (a *Authority) IssueBuilderClient(commonName string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, fmt.Errorf("pki: empty common name: %w", errdefs.ErrInvalid)
	}
	s, err := a.intermediate(builderClientsName, "kiln builder clients CA", "")
	if err != nil {
		return nil, nil, fmt.Errorf("pki: builder clients CA: %w", err)
	}
	return a.issueWith(s, ttl, x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// intermediate returns the CA under name, signed by the root, loading or
// creating it once.
func (a *Authority) intermediate(name, commonName, unit string) (*signer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.projects[name]; ok {
		return s, nil
	}
	s, err := load(a.keys, name, func() (*x509.Certificate, *ecdsa.PrivateKey, error) {
		key, err := newKey()
		if err != nil {
			return nil, nil, err
		}
		now := time.Now()
		notAfter := now.Add(projectValidity)
		if notAfter.After(a.root.cert.NotAfter) {
			notAfter = a.root.cert.NotAfter
		}
		subject := pkix.Name{CommonName: commonName, Organization: []string{"kiln"}}
		if unit != "" {
			subject.OrganizationalUnit = []string{unit}
		}
		tmpl := &x509.Certificate{
			Subject:               subject,
			NotBefore:             now.Add(-clockSkew),
			NotAfter:              notAfter,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            0,
			MaxPathLenZero:        true,
		}
		cert, err := sign(tmpl, key, a.root.cert, a.root.key)
		return cert, key, err
	})
	if err != nil {
		return nil, err
	}
	a.projects[name] = s
	return s, nil
}

// loadOrCreate reads dir/ca.crt and dir/ca.key, or makes them with create if
// ca.crt does not exist. The key is written before the certificate, so the
// certificate's presence means the pair is complete; a lone key is a leftover
// of an interrupted creation and is replaced. An flock on dir/.lock keeps two
// processes sharing the directory from interleaving a creation.
func loadOrCreate(dir string, create func() (*x509.Certificate, *ecdsa.PrivateKey, error)) (*signer, error) {
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")

	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing releases it too

	certPEM, err := os.ReadFile(certPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		cert, key, err := create()
		if err != nil {
			return nil, err
		}
		keyPEM, err := encodeKey(key)
		if err != nil {
			return nil, err
		}
		certPEM = encodeCert(cert)
		if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(certPath, certPEM, 0o600); err != nil { // the data dir is the owner's only
			return nil, err
		}
		return &signer{cert: cert, key: key, certPEM: certPEM}, nil
	case err != nil:
		return nil, err
	}

	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s exists without %s: %w", certPath, keyPath, errdefs.ErrFailedPrecondition)
		}
		return nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s: %w", keyPath, certPath, errdefs.ErrFailedPrecondition)
	}
	return &signer{cert: cert, key: key, certPEM: certPEM}, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// sign makes a certificate from tmpl for key's public half, signed by
// parent/parentKey, or self-signed when parent is nil.
func sign(tmpl *x509.Certificate, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("no CERTIFICATE PEM block: %w", errdefs.ErrInvalid)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("no PEM block: %w", errdefs.ErrInvalid)
	}
	var (
		k   any
		err error
	)
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q: %w", blk.Type, errdefs.ErrInvalid)
	}
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ECDSA: %w", k, errdefs.ErrInvalid)
	}
	return ek, nil
}
