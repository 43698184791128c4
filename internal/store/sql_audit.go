package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
)

// placeholders returns "?, ?, …" for n arguments.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func (s *SQL) CreateAuditEvent(ctx context.Context, e audit.Entry) error {
	detail := []byte("{}")
	if len(e.Detail) > 0 {
		var err error
		if detail, err = json.Marshal(e.Detail); err != nil {
			return fmt.Errorf("audit detail: %w", err)
		}
	}
	_, err := s.exec(ctx, `INSERT INTO audit_events (id, at, kind, org_id, project_id, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		e.ID, ms(e.At), e.Kind, e.OrgID, e.ProjectID, e.Actor, string(detail))
	return uniqueViolation(err, "audit event", e.ID)
}

func (s *SQL) ListAuditEvents(ctx context.Context, q audit.EntryQuery) ([]audit.Entry, error) {
	if len(q.OrgIDs) == 0 || q.Limit <= 0 {
		return nil, nil
	}
	where := []string{"org_id IN (" + placeholders(len(q.OrgIDs)) + ")"}
	var args []any
	for _, o := range q.OrgIDs {
		args = append(args, o)
	}
	if !q.Since.IsZero() {
		where = append(where, "at >= ?")
		args = append(args, ms(q.Since))
	}
	if len(q.Kinds) > 0 {
		where = append(where, "kind IN ("+placeholders(len(q.Kinds))+")")
		for _, k := range q.Kinds {
			args = append(args, k)
		}
	}
	if !q.AfterAt.IsZero() {
		where = append(where, "(at > ? OR (at = ? AND id > ?))")
		args = append(args, ms(q.AfterAt), ms(q.AfterAt), q.AfterID)
	}
	args = append(args, q.Limit)
	rows, err := s.db.QueryContext(ctx, `SELECT id, at, kind, org_id, project_id, actor, detail FROM audit_events WHERE `+
		strings.Join(where, " AND ")+` ORDER BY at, id LIMIT ?`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []audit.Entry
	for rows.Next() {
		var e audit.Entry
		var at int64
		var detail string
		if err := rows.Scan(&e.ID, &at, &e.Kind, &e.OrgID, &e.ProjectID, &e.Actor, &detail); err != nil {
			return nil, err
		}
		e.At = fromMs(at)
		if detail != "" && detail != "{}" {
			if err := json.Unmarshal([]byte(detail), &e.Detail); err != nil {
				return nil, fmt.Errorf("audit event %q: detail: %w", e.ID, err)
			}
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s *SQL) PruneAuditEvents(ctx context.Context, before time.Time, keep int) (int64, error) {
	var total int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE at < ?`, ms(before))
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		total += n
		if keep <= 0 {
			return nil
		}
		// Everything ordered before the keep-th newest event goes.
		var at int64
		var id string
		err = tx.QueryRowContext(ctx, `SELECT at, id FROM audit_events ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?`, keep-1).Scan(&at, &id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		res, err = tx.ExecContext(ctx, `DELETE FROM audit_events WHERE at < ? OR (at = ? AND id < ?)`, at, at, id)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		total += n
		return nil
	})
	return total, err
}
