// Package engine is the client side of `kiln build`: it turns a typed
// build request (internal/buildreq: from `kiln build`'s flags, a bake
// target or a source build's spec) into a validated [Request], dials a BuildKit builder ([Dial]), runs the build with the
// Dockerfile frontend built into buildkitd ([Solve]) while rendering
// progress, and writes the build's outputs and metadata files
// ([WriteIIDFile], [WriteMetadataFile]). Outputs are files and
// directories on the client, images the builder pushes with the user's
// registry credentials, or an image streamed into the local Docker engine
// ([Request.CheckDocker]); --call runs a frontend method instead of the
// build ([PrintCallResult]). A multi-platform build runs one
// solve per platform, on one builder per architecture, and merges the
// results into one image index ([SolveMulti]). --save pushes to kiln's
// registry with credentials the server lends ([Request.AddSave]); `kiln
// pull` and `kiln push` use [PullIntoDocker] and [CopyImage].
//
// Everything a user can get wrong is checked by [Prepare] (and, for flags,
// by buildreq.ParseFlags) before anything talks to a server. Such errors
// wrap errdefs.ErrInvalid and name the field or flag and the offending
// value.
//
// The package is a library: it never prints on its own and writes only to
// the io.Writers it is given. It does not depend on any kiln server package.
package engine
