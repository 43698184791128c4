// Package buildreq is a build's request, typed: what to build, from which
// context, with which arguments, secrets and outputs. Every producer makes
// this one type directly — `kiln build`'s flags (through [ParseFlags], the
// only parser of buildx-style flag strings), kiln bake's targets, the
// source-build runner's stored spec, Depot's BuildOptions and the public Go
// SDK — and the engine consumes it. Nothing downstream parses a flag string
// again.
package buildreq

import (
	"io"

	"github.com/kiln-dev/kiln/internal/platform"
)

// Request is one build.
type Request struct {
	// Context is where the build context comes from.
	Context Context
	// Dockerfile is the Dockerfile to build; zero means "Dockerfile" at the
	// context's root.
	Dockerfile Dockerfile
	// Target is the stage to build; "" is the last one.
	Target string
	// Args are build arguments (ARG), already resolved: a flag "K" that
	// takes K from the environment was looked up by the parser.
	Args map[string]string
	// Labels are image labels.
	Labels map[string]string
	// Tags name the image (-t): validated image references.
	Tags []string
	// Secrets are exposed to RUN --mount=type=secret.
	Secrets []Secret
	// SSH are agents or keys exposed to RUN --mount=type=ssh.
	SSH []SSH
	// NamedContexts are additional contexts (--build-context), by name.
	NamedContexts map[string]NamedContext
	// Platforms are the target platforms: none (the builder's own), one, or
	// several for one multi-platform image index.
	Platforms []platform.Platform
	// BuildPlatform forces every target onto one builder (linux/amd64 or
	// linux/arm64, foreign targets under emulation); zero is dynamic: each
	// target on the builder of its architecture.
	BuildPlatform platform.Platform
	// Outputs are where the result goes; none builds only (into the cache).
	Outputs []Output
	// CacheFrom and CacheTo import and export cache (the project's own
	// cache is persistent on its builder and needs neither).
	CacheFrom, CacheTo []Cache
	// Attests are attestations explicitly asked for or disabled
	// (provenance, sbom). None means BuildKit's defaults: min provenance on
	// image outputs.
	Attests []Attest
	// Network is RUN's network: "" (default, the build's private network)
	// or "none".
	Network string
	// NoCache builds every step again; NoCacheFilter only these stages.
	NoCache       bool
	NoCacheFilter []string
	// Call runs a frontend method other than build (check, outline,
	// targets); zero builds.
	Call Call
	// Lint runs the Dockerfile checks before building; nil does not.
	Lint *Lint
}

// Context is a build context: exactly one of a local directory, a tar
// archive or a git URL.
type Context struct {
	// Dir is a local directory, sent incrementally (.dockerignore honoured).
	Dir string
	// Tar is a tar archive (plain, gzip or bzip2), extracted safely before
	// the build. When it holds a lone Dockerfile instead of an archive, it
	// is the Dockerfile of an empty context (`docker build - < Dockerfile`).
	Tar io.Reader
	// Git is a git URL (git.go: URL[#ref][:subdir]) the builder fetches
	// itself; the Dockerfile is then read from the repository too.
	Git string
}

// Dockerfile names the Dockerfile: a path, or its contents.
type Dockerfile struct {
	// Path is a file path: absolute, or relative to the working directory;
	// with a Tar context, a path inside the archive.
	Path string
	// Inline is the Dockerfile's contents, instead of a path.
	Inline []byte
}

// Secret is one build secret, from exactly one of a file, an environment
// variable or a value.
type Secret struct {
	ID    string
	Src   string // a file
	Env   string // an environment variable
	Value []byte // the secret itself (server-side and SDK builds)
}

// SSH is one SSH agent socket or set of keys, by id ("default" for a plain
// RUN --mount=type=ssh). No Paths means the agent at $SSH_AUTH_SOCK.
type SSH struct {
	ID    string
	Paths []string
}

// NamedContext is one additional build context: exactly one of a local
// directory, an image, an OCI layout or a git/http(s) URL.
type NamedContext struct {
	Dir       string
	Image     string // docker-image://REF
	OCILayout string // oci-layout://PATH[:tag|@digest]
	URL       string
}

// Output is one exporter with its attributes, as buildx's -o takes them.
type Output struct {
	// Type is local, tar, oci, docker, image or cacheonly ("registry" is
	// image with push=true).
	Type string
	// Dest is a file or directory, "-" for stdout; a docker output
	// without one loads into the Docker engine.
	Dest string
	// Attrs are the exporter's other attributes (name, push, compression,
	// oci-mediatypes, ...).
	Attrs map[string]string
}

// Cache is one cache import or export: type=registry,ref=REF[,mode=max]
// or type=inline.
type Cache struct {
	Type  string
	Attrs map[string]string
}

// Attest is one attestation: provenance or sbom, enabled with attributes
// or disabled.
type Attest struct {
	Type     string
	Disabled bool
	Attrs    map[string]string
}

// Call is a frontend method other than build.
type Call struct {
	// Method is check, outline or targets; "" builds.
	Method string
	// Format is "" (text) or "json".
	Format string
	// IgnoreStatus exits 0 even when checks fail.
	IgnoreStatus bool
}

// Lint is --lint: which violations stop the build.
type Lint struct {
	// FailOn is "error" (the default), "warn" or "none".
	FailOn string
}
