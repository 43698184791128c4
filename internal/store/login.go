package store

import (
	"context"
	"time"
)

// Login statuses. A login is created pending and moves once to approved or
// denied; an approved login moves once to finished when its client collects
// the token. Expiry is not a status: a pending or approved login past
// ExpiresAt is expired (internal/login decides, the store only keeps it).
const (
	LoginPending  = "pending"
	LoginApproved = "approved"
	LoginDenied   = "denied"
	LoginFinished = "finished"
)

// Login is one device login (depot.cli.v1beta1 StartLogin/FinishLogin).
type Login struct {
	// IDHash is the SHA-256 (hex) of the id the client waits on. The id
	// itself collects a token, so like a token secret it is never stored.
	IDHash string
	// ApprovalID is the handle in the approve URL and `kiln login --approve`.
	ApprovalID string
	Status     string
	OrgID      string // approved and finished: the approving admin's organization
	ApprovedBy string // approved and finished: the approving admin's token id
	TokenID    string // approved and finished: the id the minted token gets
	Source     string // where it was started from (internal/login's form: IPv4 address, IPv6 /64)
	CreatedAt  time.Time
	ExpiresAt  time.Time
	UpdatedAt  time.Time
}

// Logins is the part of the Store that keeps device logins.
type Logins interface {
	// CreateLogin fails with ErrAlreadyExists when IDHash or ApprovalID is
	// taken.
	CreateLogin(ctx context.Context, l Login) error
	GetLogin(ctx context.Context, idHash string) (Login, error)
	GetLoginByApproval(ctx context.Context, approvalID string) (Login, error)
	// UpdateLogin reads the login, applies fn and writes it back in one
	// transaction (so exactly one of several racing callers sees a given
	// status). If fn returns an error nothing is written.
	UpdateLogin(ctx context.Context, idHash string, fn func(*Login) error) (Login, error)
	// CountLogins counts logins that expire after t (the live ones when t
	// is now).
	CountLogins(ctx context.Context, expiresAfter time.Time) (int, error)
	// CountPendingLogins counts the pending logins of one source that
	// expire after t.
	CountPendingLogins(ctx context.Context, source string, expiresAfter time.Time) (int, error)
	// DeleteLogins removes logins that expired before t and reports how many.
	DeleteLogins(ctx context.Context, expiredBefore time.Time) (int, error)
}
