// Package store persists kiln's control-plane state: organizations,
// projects, tokens (hashed), builds and their reported steps. Store is the
// one interface; sqlite.go is the embedded default, and the SQL in
// migrations/ is kept portable so a Postgres implementation can share it.
// The package knows nothing of Connect, HTTP or BuildKit. Errors wrap
// errdefs kinds (ErrNotFound, ErrAlreadyExists).
package store
