package store

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
)

// AuditLog is the part of the Store that keeps the audit log.
type AuditLog interface {
	CreateAuditEvent(ctx context.Context, e audit.Entry) error
	ListAuditEvents(ctx context.Context, q audit.EntryQuery) ([]audit.Entry, error)
	// PruneAuditEvents deletes events older than before, then the oldest
	// beyond the newest keep (keep <= 0: no count cap), and reports how
	// many it deleted.
	PruneAuditEvents(ctx context.Context, before time.Time, keep int) (int64, error)
}
