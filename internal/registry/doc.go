// Package registry is kiln's embedded OCI registry, served at /v2/ on kiln's
// one listener. It wraps distribution/distribution (v3, as a library: its
// storage and handlers) with what distribution lacks or kiln decides:
//
//   - Namespaces: one per project. A repository is "<project-id>[/<name>]";
//     its first path segment must be an existing project.
//   - Auth (distribution's own is off): a kiln token as Basic auth (any
//     username; Depot's clients send "x-token") or as a Bearer token, and the
//     Docker registry token flow: a 401 challenges with
//     `Bearer realm="<public url>/v2/token",service="kiln",scope=…`, and
//     GET/POST /v2/token exchanges a kiln token for a short-lived ES256 JWT
//     (key in Dir/token-key.pem) carrying the granted access. Rights are
//     the pull, push and delete columns of auth's one table
//     (auth.RightsIn): organization tokens everything in their
//     organization; project tokens, and CI jobs whose trust policy has
//     role "project", pull, push and delete in their project(s); CI jobs
//     of the default role and build tokens pull and push; pull tokens
//     pull in theirs; anonymous callers nothing. Refusals are OCI error JSON (401
//     UNAUTHORIZED, 403 DENIED) that never say whether another project's
//     repository exists. Authorization reads the URL query only, so a
//     request with a form body (which distribution's r.FormValue would read,
//     and prefer) is refused with 415 UNSUPPORTED first (params.go).
//   - The OCI 1.1 referrers API (GET /v2/<name>/referrers/<digest>, the
//     OCI-Subject header on manifest PUT), indexed in the store on every
//     successful manifest PUT and dropped with the manifest.
//   - An index of tags and manifests per project (ListImages, DeleteImage,
//     retention) and a garbage collector that expires images past their
//     project's retention and reclaims unreferenced blobs while the registry
//     serves (see gc.go for why an in-flight push survives it).
//
// The exported API is small:
//
//   - New(ctx, Config) opens storage (Dir, or S3Config) and keys
//     (Config.Now is its clock, for tests);
//     (*Registry).ServeHTTP serves everything under "/v2/" (mount it there,
//     outside any other auth); Run is the collector's loop (every
//     GCInterval) and Close stops distribution's background work.
//   - CollectGarbage runs one collection now and returns GCStats.
//   - ListImages and DeleteImages (Depot's RegistryService), Retention and
//     SetRetention (a project's setting), each given the caller's
//     auth.Principal; errors wrap internal/errdefs kinds.
//   - ParseRetention and FormatRetention read and write "14d"-style
//     durations for flags.
//
// It depends on internal/auth (principals), internal/store (projects, tokens,
// the registry index), internal/audit (the denial event's name) and
// distribution; it must not depend on Connect or on
// the server package. One process owns the storage: the collector's
// protection of in-flight pushes is in memory (see gc.go).
package registry
