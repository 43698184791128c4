package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/kiln-dev/kiln/internal/login"
)

const loginCols = `id_hash, approval_id, status, org_id, approved_by, token_id, source, created_at, expires_at, updated_at`

func scanLogin(sc interface{ Scan(...any) error }) (login.Login, error) {
	var l login.Login
	var created, expires, updated int64
	err := sc.Scan(&l.IDHash, &l.ApprovalID, &l.Status, &l.OrgID, &l.ApprovedBy, &l.TokenID, &l.Source, &created, &expires, &updated)
	l.CreatedAt, l.ExpiresAt, l.UpdatedAt = fromMs(created), fromMs(expires), fromMs(updated)
	return l, err
}

func (s *SQL) CreateLogin(ctx context.Context, l login.Login) error {
	_, err := s.exec(ctx, `INSERT INTO logins (`+loginCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		l.IDHash, l.ApprovalID, l.Status, l.OrgID, l.ApprovedBy, l.TokenID, l.Source, ms(l.CreatedAt), ms(l.ExpiresAt), ms(l.UpdatedAt))
	// The ids are random; a collision is reported, never overwritten.
	return uniqueViolation(err, "login", l.ApprovalID)
}

func (s *SQL) GetLogin(ctx context.Context, idHash string) (login.Login, error) {
	l, err := scanLogin(s.db.QueryRowContext(ctx, `SELECT `+loginCols+` FROM logins WHERE id_hash = ?`, idHash))
	// The message never repeats the hash: it is derived from a secret.
	return l, notFound(err, "login", "")
}

func (s *SQL) GetLoginByApproval(ctx context.Context, approvalID string) (login.Login, error) {
	l, err := scanLogin(s.db.QueryRowContext(ctx, `SELECT `+loginCols+` FROM logins WHERE approval_id = ?`, approvalID))
	return l, notFound(err, "login", approvalID)
}

func (s *SQL) UpdateLogin(ctx context.Context, idHash string, fn func(*login.Login) error) (login.Login, error) {
	var l login.Login
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		l, err = scanLogin(tx.QueryRowContext(ctx, `SELECT `+loginCols+` FROM logins WHERE id_hash = ?`+s.d.forUpdate, idHash))
		if err != nil {
			return notFound(err, "login", "")
		}
		if err := fn(&l); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE logins SET status = ?, org_id = ?, approved_by = ?, token_id = ?, expires_at = ?, updated_at = ? WHERE id_hash = ?`,
			l.Status, l.OrgID, l.ApprovedBy, l.TokenID, ms(l.ExpiresAt), ms(l.UpdatedAt), idHash)
		return err
	})
	return l, err
}

func (s *SQL) CountLogins(ctx context.Context, expiresAfter time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM logins WHERE expires_at > ?`, ms(expiresAfter)).Scan(&n)
	return n, err
}

func (s *SQL) CountPendingLogins(ctx context.Context, source string, expiresAfter time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM logins WHERE source = ? AND expires_at > ? AND status = ?`,
		source, ms(expiresAfter), login.StatusPending).Scan(&n)
	return n, err
}

func (s *SQL) DeleteLogins(ctx context.Context, expiredBefore time.Time) (int, error) {
	res, err := s.exec(ctx, `DELETE FROM logins WHERE expires_at < ?`, ms(expiredBefore))
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}
