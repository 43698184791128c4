package store

import (
	"github.com/kiln-dev/kiln/internal/auth"
)

import "context"

const trustCols = `id, project_id, org_id, provider, owner, repo, created_at,
	repo_id, owner_id, ref, ref_type, event, environment, workflow, role`

func scanTrustPolicy(sc interface{ Scan(...any) error }) (auth.TrustPolicy, error) {
	var tp auth.TrustPolicy
	var created int64
	err := sc.Scan(&tp.ID, &tp.ProjectID, &tp.OrgID, &tp.Provider, &tp.Owner, &tp.Repo, &created,
		&tp.RepoID, &tp.OwnerID, &tp.Ref, &tp.RefType, &tp.Event, &tp.Environment, &tp.Workflow, &tp.Role)
	tp.CreatedAt = fromMs(created)
	return tp, err
}

func (s *SQL) CreateTrustPolicy(ctx context.Context, tp auth.TrustPolicy) error {
	_, err := s.exec(ctx, `INSERT INTO trust_policies (`+trustCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		tp.ID, tp.ProjectID, tp.OrgID, tp.Provider, tp.Owner, tp.Repo, ms(tp.CreatedAt),
		tp.RepoID, tp.OwnerID, tp.Ref, tp.RefType, tp.Event, tp.Environment, tp.Workflow, tp.Role)
	return uniqueViolation(err, "trust policy", tp.ID)
}

func (s *SQL) GetTrustPolicy(ctx context.Context, id string) (auth.TrustPolicy, error) {
	tp, err := scanTrustPolicy(s.db.QueryRowContext(ctx, `SELECT `+trustCols+` FROM trust_policies WHERE id = ?`, id))
	return tp, notFound(err, "trust policy", id)
}

func (s *SQL) queryTrustPolicies(ctx context.Context, q string, args ...any) ([]auth.TrustPolicy, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []auth.TrustPolicy
	for rows.Next() {
		tp, err := scanTrustPolicy(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, tp)
	}
	return out, rows.Err()
}

func (s *SQL) ListTrustPolicies(ctx context.Context, projectID string) ([]auth.TrustPolicy, error) {
	return s.queryTrustPolicies(ctx, `SELECT `+trustCols+` FROM trust_policies WHERE project_id = ? ORDER BY created_at, id`, projectID)
}

func (s *SQL) MatchTrustPolicies(ctx context.Context, provider, owner string) ([]auth.TrustPolicy, error) {
	return s.queryTrustPolicies(ctx, `SELECT `+trustCols+` FROM trust_policies WHERE provider = ? AND lower(owner) = lower(?) ORDER BY created_at, id`,
		provider, owner)
}

func (s *SQL) DeleteTrustPolicy(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `DELETE FROM trust_policies WHERE id = ?`, id)
	return affected(res, err, "trust policy", id)
}
