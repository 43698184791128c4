package store

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/login"
)

// Logins is the part of the Store that keeps device logins.
type Logins interface {
	// CreateLogin fails with ErrAlreadyExists when IDHash or ApprovalID is
	// taken.
	CreateLogin(ctx context.Context, l login.Login) error
	GetLogin(ctx context.Context, idHash string) (login.Login, error)
	GetLoginByApproval(ctx context.Context, approvalID string) (login.Login, error)
	// UpdateLogin reads the login, applies fn and writes it back in one
	// transaction (so exactly one of several racing callers sees a given
	// status). If fn returns an error nothing is written.
	UpdateLogin(ctx context.Context, idHash string, fn func(*login.Login) error) (login.Login, error)
	// CountLogins counts logins that expire after t (the live ones when t
	// is now).
	CountLogins(ctx context.Context, expiresAfter time.Time) (int, error)
	// CountPendingLogins counts the pending logins of one source that
	// expire after t.
	CountPendingLogins(ctx context.Context, source string, expiresAfter time.Time) (int, error)
	// DeleteLogins removes logins that expired before t and reports how many.
	DeleteLogins(ctx context.Context, expiredBefore time.Time) (int, error)
}
