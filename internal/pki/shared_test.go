package pki_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/store"
)

// Two replicas' Authorities on one store, through the cluster's sealed
// secrets: a builder certificate from one and a client certificate from
// the other verify against each other's project CA.
func TestAuthoritiesOnOneStore(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	key := make([]byte, 32)
	rand.Read(key)
	open := func(id string) *pki.Authority {
		c, err := cluster.New(st, cluster.Config{Self: cluster.Replica{ID: id}, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		a, err := pki.Open(t.TempDir(), pki.Shared(c.Secret))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a, b := open("a"), open("b")
	if !bytes.Equal(a.RootPEM(), b.RootPEM()) {
		t.Fatal("different roots")
	}
	srv, srvKey, err := a.IssueServer("p1", "builder", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cli, cliKey, err := b.IssueClient("p1", "build-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caA, _ := a.ProjectCA("p1")
	caB, _ := b.ProjectCA("p1")
	check := func(certPEM, keyPEM, caPEM []byte, opts x509.VerifyOptions) {
		t.Helper()
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(pair.Certificate[0])
		opts.Roots = x509.NewCertPool()
		opts.Roots.AppendCertsFromPEM(caPEM)
		if _, err := c.Verify(opts); err != nil {
			t.Error(err)
		}
	}
	check(srv, srvKey, caB, x509.VerifyOptions{DNSName: "builder"})
	check(cli, cliKey, caA, x509.VerifyOptions{KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}
