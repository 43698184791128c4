package engine

import (
	"slices"

	"github.com/kiln-dev/kiln/internal/platform"
)

// Platforms are the requested target platforms, normalized, in the order
// given: none (the builder's own platform), one, or several for a
// multi-platform build.
func (r *Request) Platforms() []platform.Platform { return slices.Clone(r.platforms) }

// MultiPlatform reports whether the build targets more than one platform
// and so must be run with [SolveMulti].
func (r *Request) MultiPlatform() bool { return len(r.platforms) > 1 }

// BuilderPlatform is the builder (platform.AMD64 or platform.ARM64) that
// builds target, a platform from [Request.Platforms] (zero for a build
// with no platform). A build platform forces one builder for every
// target; otherwise (dynamic) each target runs on the builder of its
// architecture and a build with no platform on the amd64 builder.
func (r *Request) BuilderPlatform(target platform.Platform) platform.Platform {
	if !r.buildPlatform.IsZero() {
		return r.buildPlatform
	}
	if b, ok := target.Builder(); ok {
		return b
	}
	return platform.AMD64
}

// BuilderPlatforms are the distinct builders the build needs, in the order
// of the targets they first build.
func (r *Request) BuilderPlatforms() []platform.Platform {
	if len(r.platforms) == 0 {
		return []platform.Platform{r.BuilderPlatform(platform.Platform{})}
	}
	var out []platform.Platform
	for _, p := range r.platforms {
		if b := r.BuilderPlatform(p); !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}
