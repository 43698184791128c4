package store

import (
	"context"
	"time"
)

const contextCols = `key, org_id, project_id, blob_key, size, sha256, created_at, expires_at`

func scanContext(sc interface{ Scan(...any) error }) (Context, error) {
	var c Context
	var created, expires int64
	err := sc.Scan(&c.Key, &c.OrgID, &c.ProjectID, &c.BlobKey, &c.Size, &c.SHA256, &created, &expires)
	c.CreatedAt, c.ExpiresAt = fromMs(created), fromMs(expires)
	return c, err
}

func (s *SQLite) CreateContext(ctx context.Context, c Context) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO build_contexts (`+contextCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		c.Key, c.OrgID, c.ProjectID, c.BlobKey, c.Size, c.SHA256, ms(c.CreatedAt), ms(c.ExpiresAt))
	return uniqueViolation(err, "context", c.Key)
}

func (s *SQLite) GetContext(ctx context.Context, key string) (Context, error) {
	c, err := scanContext(s.db.QueryRowContext(ctx, `SELECT `+contextCols+` FROM build_contexts WHERE key = ?`, key))
	return c, notFound(err, "context", key)
}

func (s *SQLite) CountContexts(ctx context.Context, projectID string, t time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM build_contexts WHERE project_id = ? AND expires_at >= ?`, projectID, t.UnixMilli()).Scan(&n)
	return n, err
}

func (s *SQLite) ListExpiredContexts(ctx context.Context, t time.Time, limit int) ([]Context, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+contextCols+` FROM build_contexts WHERE expires_at < ? ORDER BY expires_at, key LIMIT ?`, t.UnixMilli(), limit)
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

func (s *SQLite) DeleteContext(ctx context.Context, key string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM build_contexts WHERE key = ?`, key)
	return err
}
