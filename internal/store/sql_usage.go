package store

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

func (s *SQL) QueryBuilds(ctx context.Context, q build.Query) ([]build.Build, error) {
	if q.Limit <= 0 {
		return nil, nil
	}
	where := []string{"project_id = ?"}
	args := []any{q.ProjectID}
	if !q.From.IsZero() {
		where = append(where, "created_at >= ?")
		args = append(args, ms(q.From))
	}
	if !q.To.IsZero() {
		where = append(where, "created_at < ?")
		args = append(args, ms(q.To))
	}
	if !q.BeforeCreated.IsZero() {
		where = append(where, "(created_at < ? OR (created_at = ? AND id < ?))")
		args = append(args, ms(q.BeforeCreated), ms(q.BeforeCreated), q.BeforeID)
	}
	args = append(args, q.Limit)
	return s.queryBuilds(ctx, `SELECT `+buildCols+` FROM builds WHERE `+strings.Join(where, " AND ")+
		` ORDER BY created_at DESC, id DESC LIMIT ?`, args...)
}

func (s *SQL) BuildUsage(ctx context.Context, orgID string, from, to time.Time) ([]build.ProjectUsage, error) {
	// CAST: Postgres sums BIGINTs to a NUMERIC.
	rows, err := s.db.QueryContext(ctx, `SELECT project_id, COUNT(*),
			CAST(COALESCE(SUM(CASE WHEN started_at > 0 AND finished_at > started_at THEN finished_at - started_at ELSE 0 END), 0) AS BIGINT)
		FROM builds WHERE org_id = ? AND created_at >= ? AND created_at < ?
		GROUP BY project_id ORDER BY project_id`, orgID, ms(from), ms(to))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []build.ProjectUsage
	for rows.Next() {
		var u build.ProjectUsage
		var millis int64
		if err := rows.Scan(&u.ProjectID, &u.Builds, &millis); err != nil {
			return nil, err
		}
		u.BuildTime = time.Duration(millis) * time.Millisecond
		out = append(out, u)
	}
	return out, rows.Err()
}

func (s *SQL) LastUncachedStepDurations(ctx context.Context, projectID string, names []string, before time.Time) (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	for _, name := range names {
		if _, done := out[name]; done {
			continue
		}
		var millis int64
		err := s.db.QueryRowContext(ctx, `SELECT s.completed_at - s.started_at
			FROM build_steps s JOIN builds b ON b.id = s.build_id
			WHERE s.name = ? AND b.project_id = ? AND b.created_at < ?
				AND s.cached = 0 AND s.error = '' AND s.started_at > 0 AND s.completed_at >= s.started_at
			ORDER BY s.completed_at DESC LIMIT 1`, name, projectID, ms(before)).Scan(&millis)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[name] = time.Duration(millis) * time.Millisecond
	}
	return out, nil
}

func (s *SQL) CreateBuildShare(ctx context.Context, sh build.Share) error {
	_, err := s.exec(ctx, `INSERT INTO build_shares (build_id, token, created_by, created_at) VALUES (?, ?, ?, ?)`,
		sh.BuildID, sh.Token, sh.CreatedBy, ms(sh.CreatedAt))
	return uniqueViolation(err, "build share", sh.BuildID)
}

func (s *SQL) getBuildShare(ctx context.Context, col, val string) (build.Share, error) {
	var sh build.Share
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT build_id, token, created_by, created_at FROM build_shares WHERE `+col+` = ?`, val).
		Scan(&sh.BuildID, &sh.Token, &sh.CreatedBy, &created)
	sh.CreatedAt = fromMs(created)
	return sh, err
}

func (s *SQL) GetBuildShare(ctx context.Context, buildID string) (build.Share, error) {
	sh, err := s.getBuildShare(ctx, "build_id", buildID)
	return sh, notFound(err, "build share", buildID)
}

func (s *SQL) GetBuildShareByToken(ctx context.Context, token string) (build.Share, error) {
	sh, err := s.getBuildShare(ctx, "token", token)
	// The token is a secret: never echo it in an error.
	return sh, notFound(err, "build share", "")
}

func (s *SQL) DeleteBuildShare(ctx context.Context, buildID string) error {
	res, err := s.exec(ctx, `DELETE FROM build_shares WHERE build_id = ?`, buildID)
	return affected(res, err, "build share", buildID)
}
