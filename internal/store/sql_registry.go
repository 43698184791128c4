package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"strings"
	"time"
)

var _ RegistryIndex = (*SQL)(nil)

const registryManifestCols = `repo, digest, project_id, media_type, artifact_type, subject, size, total_size, annotations, pushed_at`

func scanRegistryManifest(sc interface{ Scan(...any) error }) (RegistryManifest, error) {
	var m RegistryManifest
	var annotations string
	var pushed int64
	err := sc.Scan(&m.Repo, &m.Digest, &m.ProjectID, &m.MediaType, &m.ArtifactType, &m.Subject, &m.Size, &m.TotalSize, &annotations, &pushed)
	if err != nil {
		return m, err
	}
	m.PushedAt = fromMs(pushed)
	if annotations != "" {
		// Written by PutRegistryManifest from a map: always valid JSON.
		_ = json.Unmarshal([]byte(annotations), &m.Annotations)
	}
	return m, nil
}

func (s *SQL) PutRegistryManifest(ctx context.Context, m RegistryManifest, tag string) error {
	annotations := ""
	if len(m.Annotations) > 0 {
		b, err := json.Marshal(m.Annotations)
		if err != nil {
			return err
		}
		annotations = string(b)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO registry_manifests (`+registryManifestCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (repo, digest) DO UPDATE SET project_id = excluded.project_id, media_type = excluded.media_type,
			artifact_type = excluded.artifact_type, subject = excluded.subject, size = excluded.size,
			total_size = excluded.total_size, annotations = excluded.annotations, pushed_at = excluded.pushed_at`,
			m.Repo, m.Digest, m.ProjectID, m.MediaType, m.ArtifactType, m.Subject, m.Size, m.TotalSize, annotations, ms(m.PushedAt))
		if err != nil || tag == "" {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO registry_tags (repo, tag, project_id, digest, pushed_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (repo, tag) DO UPDATE SET project_id = excluded.project_id, digest = excluded.digest, pushed_at = excluded.pushed_at`,
			m.Repo, tag, m.ProjectID, m.Digest, ms(m.PushedAt))
		return err
	})
}

func (s *SQL) GetRegistryManifest(ctx context.Context, repo, digest string) (RegistryManifest, error) {
	m, err := scanRegistryManifest(s.db.QueryRowContext(ctx, `SELECT `+registryManifestCols+` FROM registry_manifests WHERE repo = ? AND digest = ?`, repo, digest))
	return m, notFound(err, "manifest", repo+"@"+digest)
}

func (s *SQL) queryRegistryManifests(ctx context.Context, q string, args ...any) ([]RegistryManifest, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RegistryManifest
	for rows.Next() {
		m, err := scanRegistryManifest(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *SQL) ListRegistryManifests(ctx context.Context, repo string) ([]RegistryManifest, error) {
	return s.queryRegistryManifests(ctx, `SELECT `+registryManifestCols+` FROM registry_manifests WHERE repo = ? ORDER BY digest`, repo)
}

func (s *SQL) ListRegistryReferrers(ctx context.Context, repo, subject, artifactType string) ([]RegistryManifest, error) {
	q := `SELECT ` + registryManifestCols + ` FROM registry_manifests WHERE repo = ? AND subject = ?`
	args := []any{repo, subject}
	if artifactType != "" {
		q += ` AND artifact_type = ?`
		args = append(args, artifactType)
	}
	return s.queryRegistryManifests(ctx, q+` ORDER BY pushed_at, digest`, args...)
}

func (s *SQL) DeleteRegistryManifest(ctx context.Context, repo, digest string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM registry_tags WHERE repo = ? AND digest = ?`, repo, digest); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM registry_manifests WHERE repo = ? AND digest = ?`, repo, digest)
		return err
	})
}

func (s *SQL) ListRegistryTags(ctx context.Context, q RegistryTagQuery) ([]RegistryTag, error) {
	var where []string
	var args []any
	if q.Repo != "" {
		where = append(where, `t.repo = ?`)
		args = append(args, q.Repo)
	}
	if q.ProjectID != "" {
		where = append(where, `t.project_id = ?`)
		args = append(args, q.ProjectID)
	}
	if q.AfterRepo != "" || q.AfterTag != "" {
		where = append(where, `(t.repo > ? OR (t.repo = ? AND t.tag > ?))`)
		args = append(args, q.AfterRepo, q.AfterRepo, q.AfterTag)
	}
	query := `SELECT t.repo, t.tag, t.project_id, t.digest, t.pushed_at, COALESCE(m.total_size, 0)
		FROM registry_tags t LEFT JOIN registry_manifests m ON m.repo = t.repo AND m.digest = t.digest`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	query += ` ORDER BY t.repo, t.tag`
	if q.Limit > 0 {
		query += ` LIMIT ?`
		args = append(args, q.Limit)
	}
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RegistryTag
	for rows.Next() {
		var t RegistryTag
		var pushed int64
		if err := rows.Scan(&t.Repo, &t.Tag, &t.ProjectID, &t.Digest, &pushed, &t.Size); err != nil {
			return nil, err
		}
		t.PushedAt = fromMs(pushed)
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *SQL) PutRegistryTag(ctx context.Context, t RegistryTag) error {
	_, err := s.exec(ctx, `INSERT INTO registry_tags (repo, tag, project_id, digest, pushed_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (repo, tag) DO UPDATE SET project_id = excluded.project_id, digest = excluded.digest, pushed_at = excluded.pushed_at`,
		t.Repo, t.Tag, t.ProjectID, t.Digest, ms(t.PushedAt))
	return err
}

func (s *SQL) DeleteRegistryTag(ctx context.Context, repo, tag string) error {
	_, err := s.exec(ctx, `DELETE FROM registry_tags WHERE repo = ? AND tag = ?`, repo, tag)
	return err
}

func (s *SQL) ListRegistryRepos(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT repo FROM registry_manifests UNION SELECT repo FROM registry_tags ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *SQL) DeleteRegistryRepo(ctx context.Context, repo string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM registry_tags WHERE repo = ?`, repo); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM registry_manifests WHERE repo = ?`, repo)
		return err
	})
}

func (s *SQL) GetRegistrySettings(ctx context.Context, projectID string) (RegistrySettings, error) {
	rs := RegistrySettings{ProjectID: projectID}
	var secs int64
	err := s.db.QueryRowContext(ctx, `SELECT retention_seconds FROM registry_settings WHERE project_id = ?`, projectID).Scan(&secs)
	if err == sql.ErrNoRows {
		return rs, nil
	}
	rs.Retention = time.Duration(secs) * time.Second
	return rs, err
}

func (s *SQL) PutRegistrySettings(ctx context.Context, rs RegistrySettings) error {
	_, err := s.exec(ctx, `INSERT INTO registry_settings (project_id, retention_seconds) VALUES (?, ?)
		ON CONFLICT (project_id) DO UPDATE SET retention_seconds = excluded.retention_seconds`,
		rs.ProjectID, int64(rs.Retention/time.Second))
	return err
}
