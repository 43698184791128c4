// Package web is kiln's dashboard: server-rendered HTML pages (html/template)
// for people who would rather look than read — the organization's projects,
// a project's builds with duration and cache-hit charts, and a build's page
// with its step waterfall, live log and resource peaks. A little JavaScript,
// embedded like every other asset, follows a running build.
//
// A share link (ShareBuild's /shared/{token}) renders the same build page
// read-only, with no session: the token in the path is the capability,
// resolved by build.Service.Shared; the page leaves out the log, the
// project and every form (shared.go).
//
// Who may see what is decided by the domain services (build.Service,
// project.Service) exactly as for the API: the dashboard holds a session
// per signed-in token and asks the services as that token's principal,
// re-authenticating the token on every request, so a revoked token ends
// its sessions at once. The package knows nothing of Connect, the store's
// SQL or the builders; internal/server mounts it.
package web
