package server

import (
	"context"
	"fmt"
	"net"
	"net/url"

	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// openCluster makes this replica's membership (not yet announced: Serve
// does, once the listener's address is known). With a cluster key the
// store must be Postgres: SQLite's database is one machine's.
func (s *Server) openCluster() error {
	cfg := s.cfg
	var key []byte
	if cfg.ClusterKeyFile != "" {
		if !store.IsPostgres(cfg.Store) {
			return fmt.Errorf("--cluster-key-file: several replicas need a shared Postgres store (--store postgres://…); SQLite is one machine's: %w", errdefs.ErrInvalid)
		}
		// Images and uploaded contexts on one replica's disk are missing
		// on the others (and the registry's collector on another replica
		// would drop their index entries).
		if cfg.Registry.S3.Bucket == "" || cfg.Source.S3.Bucket == "" {
			return fmt.Errorf("--cluster-key-file: several replicas need shared storage for images and uploaded contexts: give --registry-s3-bucket and --contexts-s3-bucket (docs/operating.md, Replicas): %w", errdefs.ErrInvalid)
		}
		if err := checkAdvertiseURL(cfg.AdvertiseURL); err != nil {
			return err
		}
		var err error
		if key, err = cluster.LoadKey(cfg.ClusterKeyFile); err != nil {
			return err
		}
	}
	id, err := cluster.ReplicaID(cfg.DataDir, cfg.ReplicaID)
	if err != nil {
		return err
	}
	s.cluster, err = cluster.New(s.store, cluster.Config{Self: cluster.Replica{ID: id}, Key: key, Logger: cfg.Logger.With("replica", id)})
	return err
}

// checkAdvertiseURL: each replica must be reachable at its own URL (a
// load balancer's would send builder connections and replicas' calls to
// any replica), and over TLS, since replicas' calls carry their bearer and
// answers carry builders' client keys; plain HTTP only on loopback (tests,
// one machine).
func checkAdvertiseURL(raw string) error {
	if raw == "" {
		return fmt.Errorf("--cluster-key-file: give this replica's own URL with --advertise-url (clients dial its builders' gateway there, other replicas call it there): %w", errdefs.ErrInvalid)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("--advertise-url %q: %w", raw, errdefs.ErrInvalid)
	}
	if u.Scheme != "https" {
		if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("--advertise-url %q: use https:// (replicas' calls carry their credentials; plain http only on a loopback address): %w", raw, errdefs.ErrInvalid)
		}
	}
	return nil
}

// startCluster announces this replica and beats until stopCluster;
// clusterDone is closed once it stopped and removed its record.
func (s *Server) startCluster(ctx context.Context) error {
	if err := s.cluster.Start(ctx, s.advertiseURL(), s.gatewayAddr()); err != nil {
		return err
	}
	run, stop := context.WithCancel(context.Background())
	s.stopCluster = stop
	s.clusterDone = make(chan struct{})
	go func() {
		defer close(s.clusterDone)
		s.cluster.Run(run)
	}()
	return nil
}

// advertiseURL is this replica's own URL: --advertise-url, else the
// public one.
func (s *Server) advertiseURL() string {
	if s.cfg.AdvertiseURL != "" {
		return s.cfg.AdvertiseURL
	}
	return s.publicURL()
}
