package engine

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/buildkit/client"
)

// Cache backends as buildx names them.
const (
	cacheRegistry = "registry"
	cacheInline   = "inline"
)

// ignoredCaches are cache backends kiln accepts and drops: the project's
// builder keeps its cache between builds, so a CI cache (gha) or a local
// directory adds nothing; s3 and azblob would run with the builder host's
// credentials, not the user's.
var ignoredCaches = map[string]string{
	"gha":    "the project's builder cache is persistent",
	"local":  "the project's builder cache is persistent",
	"s3":     "the project's builder cache is persistent (and s3 would use the builder host's credentials)",
	"azblob": "the project's builder cache is persistent (and azblob would use the builder host's credentials)",
}

// parseCache parses --cache-from and --cache-to like buildx: a value
// without "=" is a comma-separated list of registry references
// (type=registry,ref=REF each); otherwise type=T,key=value... type=registry
// (and type=inline for --cache-to) reach BuildKit; gha, local, s3 and
// azblob are dropped with a warning.
func (r *Request) parseCache(from, to []string) error {
	var err error
	if r.cacheImports, err = r.parseCacheFlag("--cache-from", from); err != nil {
		return err
	}
	r.cacheExports, err = r.parseCacheFlag("--cache-to", to)
	return err
}

func (r *Request) parseCacheFlag(flag string, values []string) ([]client.CacheOptionsEntry, error) {
	var out []client.CacheOptionsEntry
	for _, v := range values {
		if v == "" {
			continue
		}
		fields, err := parseCSV(v)
		if err != nil {
			return nil, invalidWrap(err, "%s %q", flag, v)
		}
		if !strings.Contains(v, "=") {
			for _, ref := range fields {
				e, err := cacheEntry(flag, v, map[string]string{"type": cacheRegistry, "ref": strings.TrimSpace(ref)})
				if err != nil {
					return nil, err
				}
				out = append(out, e)
			}
			continue
		}
		kv := map[string]string{}
		for _, f := range fields {
			k, val, ok := strings.Cut(f, "=")
			k = strings.TrimSpace(strings.ToLower(k))
			if !ok || k == "" {
				return nil, invalidf("%s %q: field %q is not key=value", flag, v, f)
			}
			if _, dup := kv[k]; dup {
				return nil, invalidf("%s %q: %s= given more than once", flag, v, k)
			}
			kv[k] = val
		}
		typ := kv["type"]
		if why, ok := ignoredCaches[typ]; ok {
			r.warnings = append(r.warnings, fmt.Sprintf("%s %s: ignored: %s", flag, v, why))
			continue
		}
		e, err := cacheEntry(flag, v, kv)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// cacheBoolAttrs are cache attributes BuildKit parses as booleans.
var cacheBoolAttrs = []string{"registry.insecure", "oci-mediatypes", "image-manifest", "ignore-error", "force-compression"}

// cacheEntry validates one registry or inline cache and returns it.
func cacheEntry(flag, v string, kv map[string]string) (client.CacheOptionsEntry, error) {
	typ := kv["type"]
	delete(kv, "type")
	switch typ {
	case "":
		return client.CacheOptionsEntry{}, invalidf("%s %q: missing type= (supported: registry, inline; gha, local, s3 and azblob are accepted and ignored)", flag, v)
	case cacheRegistry:
		ref, ok := kv["ref"]
		if !ok || ref == "" {
			return client.CacheOptionsEntry{}, invalidf("%s %q: type=registry needs ref=IMAGE", flag, v)
		}
		if _, err := reference.ParseNormalizedNamed(ref); err != nil {
			return client.CacheOptionsEntry{}, invalidWrap(err, "%s %q: ref %q", flag, v, ref)
		}
	case cacheInline:
		if flag != "--cache-to" {
			return client.CacheOptionsEntry{}, invalidf("%s %q: type=inline is only for --cache-to (read an inline cache with type=registry,ref=IMAGE)", flag, v)
		}
	default:
		return client.CacheOptionsEntry{}, invalidf("%s %q: unknown cache type %q (supported: registry, inline; gha, local, s3 and azblob are accepted and ignored)", flag, v, typ)
	}
	// mode= only matters to exports; an import ignores it, as in buildx,
	// so one value can serve both flags.
	if m, ok := kv["mode"]; ok {
		if m != "min" && m != "max" {
			return client.CacheOptionsEntry{}, invalidf("%s %q: unknown mode %q (supported: min, max)", flag, v, m)
		}
	}
	for _, k := range cacheBoolAttrs {
		if val, ok := kv[k]; ok && val != "" {
			if _, err := strconv.ParseBool(val); err != nil {
				return client.CacheOptionsEntry{}, invalidf("%s %q: %s=%q is not a boolean", flag, v, k, val)
			}
		}
	}
	if c, ok := kv["compression"]; ok {
		if _, known := compressions[c]; !known {
			return client.CacheOptionsEntry{}, invalidf("%s %q: unknown compression %q (supported: uncompressed, gzip, estargz, zstd)", flag, v, c)
		}
	}
	return client.CacheOptionsEntry{Type: typ, Attrs: kv}, nil
}

// Warnings are notes about flags that were accepted but have no effect
// (e.g. --cache-to type=gha), one line each, to show the user before the
// build.
func (r *Request) Warnings() []string { return append([]string(nil), r.warnings...) }
