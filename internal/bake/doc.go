// Package bake turns bake files (docker-bake.hcl / .json and Compose files)
// into the builds `kiln bake` runs. Parsing is docker/buildx's own bake
// package (variables, functions, groups, inherits, matrix, --set), so a file
// means in kiln what it means in `docker buildx bake`; this package adds what
// buildx does not know:
//
//   - per-target projects: the `project_id` attribute of an HCL or JSON
//     target and `x-depot.project-id` / `x-kiln.project-id` in a Compose
//     service's build section ([Definition.ProjectIDs]);
//   - checks buildx leaves out (cyclic inherits), made before anything is built;
//   - the translation of each resolved target into a [buildreq.Request], with
//     `target:` contexts kept aside as links for the caller to satisfy
//     ([Definition.Builds]), and the grouping of targets by project ([Group]).
//
// It reads files from the local disk only and never talks to a server: the
// CLI (internal/cli) creates one kiln build per project and runs the
// targets. Errors caused by the files or flags wrap errdefs.ErrInvalid.
package bake
