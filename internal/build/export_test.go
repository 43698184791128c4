package build

import "context"

// ReleaseEnded runs one round of the lease follower (replicas.go).
func (s *Service) ReleaseEnded(ctx context.Context) { s.releaseEnded(ctx) }
