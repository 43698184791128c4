package sdk

// Version is the version of this package: the kiln release it comes with.
//
// The package follows the module's tags (github.com/kiln-dev/kiln vX.Y.Z)
// and semantic versioning: within a major version, nothing exported here is
// removed or changes meaning, and a program that builds against vX.Y keeps
// building against every later vX. New options and fields may be added; the
// Option interface is sealed so that adding one breaks no one. Before v1 a
// minor version may still change the API.
const Version = "v0.1.0"
