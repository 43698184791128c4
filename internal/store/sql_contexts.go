package store

import (
	"context"
	"time"
)

const contextCols = `key, org_id, project_id, blob_key, size, sha256, charged, settled, created_at, expires_at`

func scanContext(sc interface{ Scan(...any) error }) (Context, error) {
	var c Context
	var created, expires int64
	err := sc.Scan(&c.Key, &c.OrgID, &c.ProjectID, &c.BlobKey, &c.Size, &c.SHA256, &c.Charged, &c.Settled, &created, &expires)
	c.CreatedAt, c.ExpiresAt = fromMs(created), fromMs(expires)
	return c, err
}

func (s *SQL) CreateContext(ctx context.Context, c Context) error {
	_, err := s.exec(ctx, `INSERT INTO build_contexts (`+contextCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.Key, c.OrgID, c.ProjectID, c.BlobKey, c.Size, c.SHA256, c.Charged, c.Settled, ms(c.CreatedAt), ms(c.ExpiresAt))
	return uniqueViolation(err, "context", c.Key)
}

func (s *SQL) GetContext(ctx context.Context, key string) (Context, error) {
	c, err := scanContext(s.db.QueryRowContext(ctx, `SELECT `+contextCols+` FROM build_contexts WHERE key = ?`, key))
	return c, notFound(err, "context", key)
}

func (s *SQL) CountContexts(ctx context.Context, projectID string, t time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM build_contexts WHERE project_id = ? AND expires_at >= ?`, projectID, t.UnixMilli()).Scan(&n)
	return n, err
}

func (s *SQL) ContextBytes(ctx context.Context, projectID string, t time.Time) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT CAST(COALESCE(SUM(charged), 0) AS BIGINT) FROM build_contexts WHERE project_id = ? AND expires_at >= ?`, projectID, t.UnixMilli()).Scan(&n)
	return n, err
}

func (s *SQL) ListUnsettledContexts(ctx context.Context, projectID string, createdBefore time.Time, limit int) ([]Context, error) {
	return s.listContexts(ctx, `SELECT `+contextCols+` FROM build_contexts WHERE project_id = ? AND settled = 0 AND created_at < ? ORDER BY created_at, key LIMIT ?`,
		projectID, createdBefore.UnixMilli(), limit)
}

func (s *SQL) SettleContext(ctx context.Context, key string, charged int64) error {
	_, err := s.exec(ctx, `UPDATE build_contexts SET charged = ?, settled = 1 WHERE key = ? AND settled = 0`, charged, key)
	return err
}

func (s *SQL) PinContextDigest(ctx context.Context, key, sha256 string) (string, error) {
	if _, err := s.exec(ctx, `UPDATE build_contexts SET sha256 = ? WHERE key = ? AND sha256 = ''`, sha256, key); err != nil {
		return "", err
	}
	var pinned string
	err := s.db.QueryRowContext(ctx, `SELECT sha256 FROM build_contexts WHERE key = ?`, key).Scan(&pinned)
	return pinned, notFound(err, "context", key)
}

func (s *SQL) ListExpiredContexts(ctx context.Context, t time.Time, limit int) ([]Context, error) {
	return s.listContexts(ctx, `SELECT `+contextCols+` FROM build_contexts WHERE expires_at < ? ORDER BY expires_at, key LIMIT ?`, t.UnixMilli(), limit)
}

func (s *SQL) listContexts(ctx context.Context, query string, args ...any) ([]Context, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Context
	for rows.Next() {
		c, err := scanContext(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func (s *SQL) DeleteContext(ctx context.Context, key string) error {
	_, err := s.exec(ctx, `DELETE FROM build_contexts WHERE key = ?`, key)
	return err
}
