package main

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/redact"
	"github.com/kiln-dev/kiln/internal/server"
	"github.com/kiln-dev/kiln/internal/store"
)

// storeServeExample shows the store flag in `kiln serve --help`.
const storeServeExample = `
  # the control plane's state in Postgres instead of DATA/kiln.db (docs/operating.md "Postgres"):
  KILN_STORE='postgres://kiln:PASSWORD@db.internal:5432/kiln?sslmode=verify-full' kiln serve`

// replicasServeExample shows the replica flags in `kiln serve --help`.
const replicasServeExample = `
  # two replicas behind one load balancer, on one Postgres and one S3 (docs/operating.md "Replicas"):
  openssl rand -hex 32 > cluster.key && chmod 600 cluster.key   # the same file on every replica
  KILN_STORE=postgres://… kiln serve --cluster-key-file cluster.key --public-url https://kiln.example.com \
    --advertise-url https://replica1.internal:7420 --registry-s3-bucket … --contexts-s3-bucket …`

// registerStoreFlags adds `kiln serve --store` and the replica flags.
func registerStoreFlags(f *pflag.FlagSet, cfg *server.Config) {
	cfg.Store = os.Getenv("KILN_STORE")
	f.Var(storeLocation{&cfg.Store}, "store",
		"where the control plane's state lives: sqlite:PATH (a database file, or a data directory holding kiln.db) or postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=…; the password is never logged, so prefer KILN_STORE to the flag, which other users may see in the process list (env KILN_STORE; default: sqlite:DATA/kiln.db)")
	f.StringVar(&cfg.ClusterKeyFile, "cluster-key-file", os.Getenv("KILN_CLUSTER_KEY_FILE"),
		"file holding the cluster key (64 hex digits, mode 0600; make one with openssl rand -hex 32), the same on every replica: with it, several kiln serve replicas share one Postgres store, and key material (CA, registry token key) lives in the store sealed with it (env KILN_CLUSTER_KEY_FILE; default: none, one replica)")
	f.StringVar(&cfg.ReplicaID, "replica-id", os.Getenv("KILN_REPLICA_ID"),
		"this replica's id, stable across restarts (env KILN_REPLICA_ID; default: made on first start and kept in DATA/replica-id)")
	f.StringVar(&cfg.AdvertiseURL, "advertise-url", os.Getenv("KILN_ADVERTISE_URL"),
		"this replica's own URL, which clients dial for its builders' gateway and other replicas for internal calls, when --public-url is a load balancer's (env KILN_ADVERTISE_URL; default: --public-url)")
}

// storeLocation is a store location flag whose value, as --help and
// errors show it, has its password masked.
type storeLocation struct{ p *string }

func (s storeLocation) String() string {
	if s.p == nil {
		return ""
	}
	return redact.URL(*s.p)
}

func (s storeLocation) Set(v string) error { *s.p = v; return nil }
func (s storeLocation) Type() string       { return "location" }

// describeStore is the store kiln serve opens, to log: a SQLite file's
// path, or the Postgres URL without its password.
func describeStore(location, dataDir string) string {
	if path, ok := store.SQLitePath(location, dataDir); ok {
		return "sqlite:" + path
	}
	return redact.URL(location)
}
