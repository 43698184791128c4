package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/store"
)

// The data directory's keys are the same on every replica: the first
// seeds the store from its file, a later one sets its own aside.
func TestDataSecretsAreShared(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	key := make([]byte, 32)
	rand.Read(key)
	replica := func(id string) *Server {
		c, err := cluster.New(st, cluster.Config{Self: cluster.Replica{ID: id}, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return &Server{cluster: c}
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	own := func(dir string) []byte {
		b, err := blob.LoadOrCreateSecret(filepath.Join(dir, "secrets.key"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := own(dirA), own(dirB)
	gotA, err := replica("a").dataSecret(ctx, "secrets-key", filepath.Join(dirA, "secrets.key"))
	if err != nil || !bytes.Equal(gotA, a) {
		t.Fatalf("the first replica did not keep its key: %v", err)
	}
	gotB, err := replica("b").dataSecret(ctx, "secrets-key", filepath.Join(dirB, "secrets.key"))
	if err != nil || !bytes.Equal(gotB, a) {
		t.Fatalf("the second replica has another key: %v", err)
	}
	if set, _ := os.ReadFile(filepath.Join(dirB, "secrets.key.replaced")); !bytes.Equal(set, b) {
		t.Error("the second replica's own key was not set aside")
	}
	if file, _ := os.ReadFile(filepath.Join(dirB, "secrets.key")); !bytes.Equal(file, a) {
		t.Error("the second replica's file does not hold the shared key")
	}
	single, err := (&Server{cluster: func() *cluster.Cluster {
		c, _ := cluster.New(st, cluster.Config{Self: cluster.Replica{ID: "c"}})
		return c
	}()}).dataSecret(ctx, "secrets-key", filepath.Join(t.TempDir(), "secrets.key"))
	if err != nil || bytes.Equal(single, a) {
		t.Fatalf("one replica without a cluster key used the shared key: %v", err)
	}
}
