package login

// Hooks for login_test, which opens a real store (internal/store imports
// this package, so those tests cannot live in package login).

var NewApprovalID = newApprovalID

const (
	IDLen            = idLen
	ApprovalLen      = approvalLen
	ApprovalAlphabet = approvalAlphabet
)

// WaitersLeft reports the waiters and watched logins the service still
// tracks.
func (s *Service) WaitersLeft() (waiters, watches int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters, len(s.watches)
}

// Store is the store the service was built with.
func (s *Service) Store() Store { return s.store }
