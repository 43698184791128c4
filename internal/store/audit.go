package store

import (
	"context"
	"time"
)

// AuditEvent is one entry of the audit log. Kinds and what Detail holds
// are internal/audit's; the store only keeps them.
type AuditEvent struct {
	ID        string
	Kind      string
	OrgID     string // "" when the event cannot be attributed (an unknown token)
	ProjectID string
	Actor     string // the acting token's id, "" when unauthenticated
	Detail    map[string]string
	At        time.Time
}

// AuditQuery selects audit events, oldest first.
type AuditQuery struct {
	// OrgIDs: events of any of these organizations ("" selects the
	// unattributed ones). Required: an empty list selects nothing.
	OrgIDs []string
	Since  time.Time // events at or after; zero: all
	Kinds  []string  // empty: every kind
	// AfterAt and AfterID continue a listing after the last event of the
	// previous page (events are ordered by (At, ID)).
	AfterAt time.Time
	AfterID string
	Limit   int
}

// AuditLog is the part of the Store that keeps the audit log.
type AuditLog interface {
	CreateAuditEvent(ctx context.Context, e AuditEvent) error
	ListAuditEvents(ctx context.Context, q AuditQuery) ([]AuditEvent, error)
	// PruneAuditEvents deletes events older than before, then the oldest
	// beyond the newest keep (keep <= 0: no count cap), and reports how
	// many it deleted.
	PruneAuditEvents(ctx context.Context, before time.Time, keep int) (int64, error)
}
