package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// What a CI job obtained records the trust policies that admitted it
// (migration 00011): tokens.trust_policy_ids and builds.trust_policy_ids,
// space-separated.

// joinIDs and splitIDs store a list of policy ids.
func joinIDs(ids []string) string { return strings.Join(ids, " ") }

func splitIDs(s string) []string { return strings.Fields(s) }

// policiesExist is a WHERE condition (and its arguments) that holds only
// while every policy of ids exists; "1 = 1" for none. On Postgres it locks
// the policies until the statement's transaction ends, so a revocation
// running meanwhile waits for the token or build being stored, and then
// deletes it.
func (s *SQL) policiesExist(ids []string) (string, []any) {
	var uniq []string
	for _, id := range ids {
		if !slices.Contains(uniq, id) {
			uniq = append(uniq, id)
		}
	}
	if len(uniq) == 0 {
		return "1 = 1", nil
	}
	args := make([]any, 0, len(uniq)+1)
	for _, id := range uniq {
		args = append(args, id)
	}
	args = append(args, len(uniq))
	return `(SELECT COUNT(*) FROM (SELECT id FROM trust_policies WHERE id IN (?` + strings.Repeat(", ?", len(uniq)-1) + `)` + s.d.forShare + `) p) = ?`, args
}

// admitted reads the result of a conditional insert (policiesExist).
func admitted(res sql.Result) error {
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("the trust policy that admitted this CI job was removed; ask the project's administrator to add one: %w", errdefs.ErrPermission)
	}
	return nil
}

// RevokeTrustPolicy deletes a trust policy and, in the same transaction,
// every token a CI job it admitted obtained (tokens recording it). The
// builds such jobs started end through the build service
// (build.Service.EndAdmittedBy), which reads builds.trust_policy_ids.
func (s *SQL) RevokeTrustPolicy(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM trust_policies WHERE id = ?`, id)
		if err := affected(res, err, "trust policy", id); err != nil {
			return err
		}
		// instr (strpos on Postgres), not LIKE: policy ids contain '_', a
		// LIKE wildcard.
		_, err = tx.ExecContext(ctx, `DELETE FROM tokens WHERE trust_policy_ids <> '' AND `+s.d.instr+`(' ' || trust_policy_ids || ' ', ' ' || ? || ' ') > 0`, id)
		return err
	})
}

// TrustPoliciesExist reports whether every policy of ids still exists.
func (s *SQL) TrustPoliciesExist(ctx context.Context, ids []string) (bool, error) {
	if len(ids) == 0 {
		return true, nil
	}
	cond, args := s.policiesExist(ids)
	var ok bool
	err := s.db.QueryRowContext(ctx, `SELECT `+cond, args...).Scan(&ok)
	return ok, err
}
