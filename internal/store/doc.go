// Package store persists kiln's control-plane state in SQL: organizations,
// projects, tokens (hashed), builds and their reported steps, trust
// policies, logins, the audit log, uploaded contexts and the registry's
// index. One implementation, SQL (sql*.go), runs on SQLite (sqlite.go, the
// embedded default) and Postgres (postgres.go): the schema, the migrations
// in migrations/ and every query are shared, kept portable, and what the
// two databases spell differently sits in dialect.go. Open picks one by
// the location kiln serve --store takes; Copy moves an install from one to
// the other (kiln store migrate).
//
// The records it keeps belong to the domain packages (build.Build,
// project.Project, auth.Token, login.Login, audit.Entry), which each
// declare the small store interface they use; the SQL store satisfies
// all of them (see the assertions in sql.go). store imports the domain
// packages, never the reverse. Store is the whole, for the server's
// wiring. The package knows nothing of Connect, HTTP or BuildKit. Errors
// wrap errdefs kinds (ErrNotFound, ErrAlreadyExists).
package store
