package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// WebSession is a browser's sign-in to the dashboard (internal/web).
type WebSession struct {
	// IDHash is the hex SHA-256 of the session id in the browser's
	// cookie: the stored value cannot be replayed as one.
	IDHash string
	// TokenID is the token it signed in with, looked up again on every
	// request, so deleting the token ends the session. Its secret is not
	// kept.
	TokenID string
	// CSRF is the session's anti-forgery token.
	CSRF string
	// Minted: a device login made the token for this session; it is
	// deleted when the session ends.
	Minted    bool
	CreatedAt time.Time
	SeenAt    time.Time
}

// WebLogin is a browser's pending device login.
type WebLogin struct {
	// IDHash is the hex SHA-256 of the browser's kiln_login cookie.
	IDHash string
	// LoginSealed is the login's id (which collects its token), sealed
	// with a key derived from the cookie (internal/web).
	LoginSealed string
	ApprovalID  string
	Code        string
	ExpiresAt   time.Time
}

// WebSessions keeps the dashboard's sessions and pending device logins.
type WebSessions interface {
	// CreateWebSession stores ws. When its token has maxPerToken sessions
	// already, the least recently seen of them end to make room: they are
	// returned.
	CreateWebSession(ctx context.Context, ws WebSession, maxPerToken int) (ended []WebSession, err error)
	// GetWebSession returns the session of idHash; ErrNotFound if none.
	GetWebSession(ctx context.Context, idHash string) (WebSession, error)
	// TouchWebSession records a use of the session at seen.
	TouchWebSession(ctx context.Context, idHash string, seen time.Time) error
	// DeleteWebSession ends the session of idHash and returns it;
	// ErrNotFound if none (or another caller ended it first).
	DeleteWebSession(ctx context.Context, idHash string) (WebSession, error)
	// ExpireWebSessions ends up to limit sessions last seen before
	// seenBefore or created before createdBefore and returns them. Of
	// concurrent callers, each ended session is returned to one.
	ExpireWebSessions(ctx context.Context, seenBefore, createdBefore time.Time, limit int) ([]WebSession, error)

	// PutWebLogin stores a pending device login, and deletes those expired.
	PutWebLogin(ctx context.Context, l WebLogin) error
	// GetWebLogin returns the pending device login of idHash; ErrNotFound
	// if none.
	GetWebLogin(ctx context.Context, idHash string) (WebLogin, error)
	DeleteWebLogin(ctx context.Context, idHash string) error
}

var _ WebSessions = (*SQL)(nil)

const webSessionCols = `id_hash, token_id, csrf, minted, created_at, seen_at`

func scanWebSession(sc interface{ Scan(...any) error }) (WebSession, error) {
	var ws WebSession
	var minted int
	var created, seen int64
	err := sc.Scan(&ws.IDHash, &ws.TokenID, &ws.CSRF, &minted, &created, &seen)
	ws.Minted, ws.CreatedAt, ws.SeenAt = minted != 0, fromMs(created), fromMs(seen)
	return ws, err
}

func (s *SQL) CreateWebSession(ctx context.Context, ws WebSession, maxPerToken int) ([]WebSession, error) {
	var over []WebSession
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// The token's row serializes its sign-ins (on Postgres; SQLite runs
		// one transaction at a time), so racing ones keep to the cap.
		var id string
		if err := tx.QueryRowContext(ctx, `SELECT id FROM tokens WHERE id = ?`+s.d.forUpdate, ws.TokenID).Scan(&id); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+webSessionCols+` FROM web_sessions WHERE token_id = ? ORDER BY seen_at DESC, id_hash`, ws.TokenID)
		if err != nil {
			return err
		}
		var have []WebSession
		for rows.Next() {
			w, err := scanWebSession(rows)
			if err != nil {
				rows.Close()
				return err
			}
			have = append(have, w)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		over = nil
		if maxPerToken > 0 && len(have) >= maxPerToken {
			over = have[maxPerToken-1:]
		}
		for _, w := range over {
			if _, err := tx.ExecContext(ctx, `DELETE FROM web_sessions WHERE id_hash = ?`, w.IDHash); err != nil {
				return err
			}
		}
		minted := 0
		if ws.Minted {
			minted = 1
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO web_sessions (`+webSessionCols+`) VALUES (?, ?, ?, ?, ?, ?)`,
			ws.IDHash, ws.TokenID, ws.CSRF, minted, ms(ws.CreatedAt), ms(ws.SeenAt))
		// The ids are random; a collision is reported, never overwritten.
		return uniqueViolation(err, "dashboard session", "")
	})
	if err != nil {
		return nil, err
	}
	return over, nil
}

func (s *SQL) GetWebSession(ctx context.Context, idHash string) (WebSession, error) {
	ws, err := scanWebSession(s.db.QueryRowContext(ctx, `SELECT `+webSessionCols+` FROM web_sessions WHERE id_hash = ?`, idHash))
	// The message never repeats the hash: it is derived from a secret.
	return ws, notFound(err, "dashboard session", "")
}

func (s *SQL) TouchWebSession(ctx context.Context, idHash string, seen time.Time) error {
	_, err := s.exec(ctx, `UPDATE web_sessions SET seen_at = ? WHERE id_hash = ? AND seen_at < ?`, ms(seen), idHash, ms(seen))
	return err
}

func (s *SQL) DeleteWebSession(ctx context.Context, idHash string) (WebSession, error) {
	ws, err := s.GetWebSession(ctx, idHash)
	if err != nil {
		return ws, err
	}
	if ok, err := s.deleteWebSession(ctx, idHash); err != nil || !ok {
		return WebSession{}, notFound(orNoRows(err), "dashboard session", "")
	}
	return ws, nil
}

// deleteWebSession deletes one session; ok is false when none was there
// (another caller deleted it first).
func (s *SQL) deleteWebSession(ctx context.Context, idHash string) (ok bool, err error) {
	res, err := s.exec(ctx, `DELETE FROM web_sessions WHERE id_hash = ?`, idHash)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// orNoRows is err, or sql.ErrNoRows for none.
func orNoRows(err error) error {
	if err == nil {
		return sql.ErrNoRows
	}
	return err
}

func (s *SQL) ExpireWebSessions(ctx context.Context, seenBefore, createdBefore time.Time, limit int) ([]WebSession, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+webSessionCols+` FROM web_sessions WHERE seen_at < ? OR created_at < ? ORDER BY seen_at LIMIT ?`,
		ms(seenBefore), ms(createdBefore), limit)
	if err != nil {
		return nil, err
	}
	var found []WebSession
	for rows.Next() {
		ws, err := scanWebSession(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		found = append(found, ws)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var ended []WebSession
	for _, ws := range found {
		// Each is returned by the caller whose delete took it.
		ok, err := s.deleteWebSession(ctx, ws.IDHash)
		if err != nil {
			return ended, err
		}
		if ok {
			ended = append(ended, ws)
		}
	}
	return ended, nil
}

func (s *SQL) PutWebLogin(ctx context.Context, l WebLogin) error {
	if _, err := s.exec(ctx, `DELETE FROM web_logins WHERE expires_at < ?`, ms(time.Now())); err != nil {
		return err
	}
	_, err := s.exec(ctx, `INSERT INTO web_logins (id_hash, login_sealed, approval_id, code, expires_at) VALUES (?, ?, ?, ?, ?)`,
		l.IDHash, l.LoginSealed, l.ApprovalID, l.Code, ms(l.ExpiresAt))
	return uniqueViolation(err, "pending device login", "")
}

func (s *SQL) GetWebLogin(ctx context.Context, idHash string) (WebLogin, error) {
	var l WebLogin
	var expires int64
	err := s.db.QueryRowContext(ctx, `SELECT id_hash, login_sealed, approval_id, code, expires_at FROM web_logins WHERE id_hash = ?`, idHash).
		Scan(&l.IDHash, &l.LoginSealed, &l.ApprovalID, &l.Code, &expires)
	l.ExpiresAt = fromMs(expires)
	return l, notFound(err, "pending device login", "")
}

func (s *SQL) DeleteWebLogin(ctx context.Context, idHash string) error {
	_, err := s.exec(ctx, `DELETE FROM web_logins WHERE id_hash = ?`, idHash)
	return err
}
