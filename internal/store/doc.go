// Package store persists kiln's control-plane state in SQL: organizations,
// projects, tokens (hashed), builds and their reported steps, trust
// policies, logins, the audit log, uploaded contexts and the registry's
// index. sqlite.go is the embedded default, and the SQL in migrations/ is
// kept portable so a Postgres implementation can share it.
//
// The records it keeps belong to the domain packages (build.Build,
// project.Project, auth.Token, login.Login, audit.Entry), which each
// declare the small store interface they use; the SQLite store satisfies
// all of them (see the assertions in sqlite.go). store imports the domain
// packages, never the reverse. Store is the whole, for the server's
// wiring. The package knows nothing of Connect, HTTP or BuildKit. Errors
// wrap errdefs kinds (ErrNotFound, ErrAlreadyExists).
package store
