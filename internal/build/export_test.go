package build

import "context"

// ReleaseEnded runs one round of the lease follower (replicas.go).
func (s *Service) ReleaseEnded(ctx context.Context) { s.releaseEnded(ctx) }

// ReapTick runs one round of the health reaper as Run does.
func (s *Service) ReapTick(ctx context.Context) error { return s.reapTick(ctx) }
