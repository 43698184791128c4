package server

import (
	"context"
	"fmt"

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

// startCluster announces this replica and beats until bg ends; clusterDone
// is closed once it stopped and removed its record.
func (s *Server) startCluster(ctx, bg context.Context) error {
	if err := s.cluster.Start(ctx, s.advertiseURL(), s.gatewayAddr()); err != nil {
		return err
	}
	s.clusterDone = make(chan struct{})
	go func() {
		defer close(s.clusterDone)
		s.cluster.Run(bg)
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
