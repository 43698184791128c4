package engine

import (
	"fmt"
	"maps"

	"github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/buildreq"
)

// setCaches takes the request's cache imports and exports: registry and
// inline ones reach BuildKit; gha, local, s3 and azblob are dropped with a
// warning (see [buildreq.IgnoredCache]).
func (r *Request) setCaches(from, to []buildreq.Cache) {
	r.cacheImports = r.cacheEntries("--cache-from", from)
	r.cacheExports = r.cacheEntries("--cache-to", to)
}

func (r *Request) cacheEntries(flag string, caches []buildreq.Cache) []client.CacheOptionsEntry {
	var out []client.CacheOptionsEntry
	for _, c := range caches {
		if why, ok := buildreq.IgnoredCache(c.Type); ok {
			r.warnings = append(r.warnings, fmt.Sprintf("%s %s: ignored: %s", flag, c, why))
			continue
		}
		attrs := maps.Clone(c.Attrs)
		if attrs == nil {
			attrs = map[string]string{}
		}
		out = append(out, client.CacheOptionsEntry{Type: c.Type, Attrs: attrs})
	}
	return out
}

// Warnings are notes about options that were accepted but have no effect
// (e.g. --cache-to type=gha), one line each, to show the user before the
// build.
func (r *Request) Warnings() []string { return append([]string(nil), r.warnings...) }
