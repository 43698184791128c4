package engine

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	controlapi "github.com/moby/buildkit/api/services/control"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

type testCert struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM string
	keyPEM  string
}

func newTestCert(t *testing.T, cn string, parent *testCert, server bool) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	signer, signKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign
	} else {
		signer, signKey = parent.cert, parent.key
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.DNSNames = []string{cn}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	return &testCert{
		cert:    cert,
		key:     key,
		certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
	}
}

type fakeControl struct {
	controlapi.UnimplementedControlServer
}

func (fakeControl) ListWorkers(context.Context, *controlapi.ListWorkersRequest) (*controlapi.ListWorkersResponse, error) {
	return &controlapi.ListWorkersResponse{}, nil
}

// TestDialMTLS dials a gRPC server that requires client certificates and
// (as grpc-go does for TLS) ALPN h2, with credentials held only in memory.
func TestDialMTLS(t *testing.T) {
	ca := newTestCert(t, "kiln test CA", nil, false)
	srvCert := newTestCert(t, "builder.kiln.test", ca, true)
	cliCert := newTestCert(t, "kiln-cli", ca, false)

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	pair, err := tls.X509KeyPair([]byte(srvCert.certPEM), []byte(srvCert.keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	})))
	controlapi.RegisterControlServer(srv, fakeControl{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := Connection{
		Endpoint:   "tcp://" + ln.Addr().String(),
		ServerName: "builder.kiln.test",
		CertPEM:    cliCert.certPEM,
		KeyPEM:     cliCert.keyPEM,
		CACertPEM:  ca.certPEM,
	}
	c, err := Dial(ctx, conn)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	c.Close()

	// Without a client certificate the server refuses the handshake.
	noCert := conn
	noCert.CertPEM, noCert.KeyPEM = "", ""
	shortCtx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if c, err := Dial(shortCtx, noCert); err == nil {
		c.Close()
		t.Error("Dial without client cert succeeded")
	} else if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Dial without client cert: %v, want ErrUnavailable", err)
	}

	// A wrong server name fails verification.
	wrongName := conn
	wrongName.ServerName = "other.kiln.test"
	shortCtx3, cancel3 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel3()
	if c, err := Dial(shortCtx3, wrongName); err == nil {
		c.Close()
		t.Error("Dial with wrong server name succeeded")
	}
}

func TestDialInvalid(t *testing.T) {
	ctx := context.Background()
	for _, c := range []Connection{
		{Endpoint: ""},
		{Endpoint: "http://x:1"},
		{Endpoint: "tcp://"},
		{Endpoint: "tcp://host-without-port"},
		{Endpoint: "unix:///tmp/x.sock", CACertPEM: "x"},
		{Endpoint: "tcp://h:1", CACertPEM: "not pem"},
		{Endpoint: "tcp://h:1", CertPEM: "x"},
	} {
		_, err := Dial(ctx, c)
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", c, err)
		}
	}
	// Nothing listening: unavailable.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, Connection{Endpoint: "unix:///nonexistent/kiln/bk.sock"})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "unix:///nonexistent/kiln/bk.sock") {
		t.Errorf("unreachable: %v", err)
	}
}
