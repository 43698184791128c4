package buildreq

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/buildkit/frontend/dockerfile/dfgitutil"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// The checks of one value each, shared by [ParseFlags] (whose errors name
// the flag and the value as typed) and [Request.Validate] (whose errors
// name the field): each returns a plain error, which the caller labels.

// Output types (BuildKit's exporters) and buildx's alias for an image
// output that pushes.
const (
	OutputLocal    = "local"
	OutputTar      = "tar"
	OutputOCI      = "oci"
	OutputDocker   = "docker"
	OutputImage    = "image"
	outputRegistry = "registry"
	outputCacheOn  = "cacheonly"
)

// supportedOutputs lists the -o types, for messages.
const supportedOutputs = "local, tar, oci, docker, image, registry, cacheonly"

// Attestation types BuildKit's Dockerfile frontend produces.
const (
	AttestProvenance = "provenance"
	AttestSBOM       = "sbom"
)

// Cache backends as buildx names them.
const (
	CacheRegistry = "registry"
	CacheInline   = "inline"
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

// IgnoredCache reports whether a cache of type typ is accepted and
// dropped (gha, local, s3, azblob), and why, for the warning the user sees.
func IgnoredCache(typ string) (why string, ignored bool) {
	why, ignored = ignoredCaches[typ]
	return why, ignored
}

// Lint failure levels (--lint-fail-on, as in depot build).
const (
	LintFailOnError = "error"
	LintFailOnWarn  = "warn"
	LintFailOnNone  = "none"
)

// IsLoad reports whether o loads the image into the local Docker engine.
func (o Output) IsLoad() bool { return o.Type == OutputDocker && o.Dest == "" }

// IsPush reports whether o pushes to a registry.
func (o Output) IsPush() bool {
	if o.Type != OutputImage {
		return false
	}
	v, ok := o.Attrs["push"]
	b, _ := strconv.ParseBool(v)
	return ok && (v == "" || b)
}

// IsImage reports whether o produces an image (and so an image digest).
func (o Output) IsImage() bool {
	switch o.Type {
	case OutputImage, OutputOCI, OutputDocker:
		return true
	}
	return false
}

// IsDir reports whether o writes a directory rather than a file:
// type=local, and type=oci or type=docker with tar=false (an OCI layout).
func (o Output) IsDir() bool {
	if o.Type == OutputLocal {
		return true
	}
	if o.Type == OutputOCI || o.Type == OutputDocker {
		if v, ok := o.Attrs["tar"]; ok {
			b, err := strconv.ParseBool(v)
			return err == nil && !b
		}
	}
	return false
}

// String is o in buildx's -o syntax: type, dest, then the attributes
// sorted by name.
func (o Output) String() string {
	rec := []string{"type=" + o.Type}
	if o.Dest != "" {
		rec = append(rec, "dest="+o.Dest)
	}
	return CSVLine(append(rec, sortedKV(o.Attrs)...))
}

// String is c in buildx's --cache-from/--cache-to syntax.
func (c Cache) String() string {
	return CSVLine(append([]string{"type=" + c.Type}, sortedKV(c.Attrs)...))
}

func sortedKV(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// CSVLine writes one CSV record without the trailing newline (the way
// buildx joins key=value fields).
func CSVLine(record []string) string {
	if len(record) == 0 {
		return ""
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write(record) // a bytes.Buffer does not fail
	w.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}

// checkTag checks an image reference given as a tag.
func checkTag(t string) error {
	if t == "" {
		return errors.New("empty image reference")
	}
	_, err := reference.ParseNormalizedNamed(t)
	return err
}

// checkName checks a build-arg or label name.
func checkName(k string) bool { return k != "" && strings.TrimSpace(k) == k }

// checkTarget checks a stage name.
func checkTarget(t string) bool {
	return strings.TrimSpace(t) == t && !strings.ContainsAny(t, " \t\n,")
}

// checkStage checks a --no-cache-filter stage name.
func checkStage(f string) bool { return f != "" && !strings.ContainsAny(f, ", \t") }

// outputBoolAttrs are the exporter attributes BuildKit parses as booleans;
// a typo in one would otherwise only fail on the builder.
var outputBoolAttrs = []string{
	"push", "push-by-digest", "registry.insecure", "unpack", "store", "name-canonical",
	"oci-mediatypes", "oci-artifact", "force-compression", "rewrite-timestamp", "tar", "platform-split",
}

// Compressions are the layer compressions BuildKit's image exporters know,
// with the compression-level range each accepts.
var compressions = map[string][2]int{
	"uncompressed": {0, 0},
	"gzip":         {0, 9},
	"estargz":      {0, 9},
	"zstd":         {0, 22},
}

// NewOutput makes an output the way buildx reads one: type=registry is an
// image output that always pushes, tar and oci without dest write to
// stdout, docker without dest loads into the Docker engine, and
// type=cacheonly is no output at all (nil). attrs are kept (not copied).
// Errors are plain: the caller says which output.
func NewOutput(typ, dest string, attrs map[string]string) (*Output, error) {
	if attrs == nil {
		attrs = map[string]string{}
	}
	o := &Output{Type: typ, Dest: dest, Attrs: attrs}
	switch o.Type {
	case outputCacheOn:
		return nil, nil
	case outputRegistry:
		o.Type = OutputImage
		if p, ok := o.Attrs["push"]; ok {
			if b, err := strconv.ParseBool(p); err != nil || !b {
				return nil, fmt.Errorf("type=registry always pushes; push=%s contradicts it (use type=image)", p)
			}
		}
		o.Attrs["push"] = "true"
	}
	if dest == "" && (o.Type == OutputTar || o.Type == OutputOCI) && !o.IsDir() {
		o.Dest = "-"
	}
	if err := checkOutputShape(*o); err != nil {
		return nil, err
	}
	return o, nil
}

// checkOutputShape checks an output's type against its destination.
func checkOutputShape(o Output) error {
	switch o.Type {
	case OutputLocal, OutputTar, OutputOCI, OutputDocker, OutputImage:
	case "":
		return fmt.Errorf("missing type= (supported: %s)", supportedOutputs)
	default:
		return fmt.Errorf("unknown output type %q (supported: %s)", o.Type, supportedOutputs)
	}
	switch {
	case o.Type == OutputImage && o.Dest != "":
		return fmt.Errorf("type=%s takes name= (an image reference), not dest=", o.Type)
	case o.Type == OutputLocal && o.Dest == "":
		return errors.New("missing dest= (the directory to write)")
	case o.IsDir() && o.Type != OutputLocal && o.Dest == "":
		return errors.New("tar=false writes a directory; give dest=DIR")
	case (o.Type == OutputTar || o.Type == OutputOCI) && o.Dest == "":
		return errors.New("missing dest= (a path, or \"-\" for stdout)")
	}
	return nil
}

// checkOutputAttrs checks an output's attributes and dest=-.
func checkOutputAttrs(o Output) error {
	for _, k := range outputBoolAttrs {
		if v, ok := o.Attrs[k]; ok && v != "" {
			if _, err := strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%s=%q is not a boolean (true or false)", k, v)
			}
		}
	}
	comp := "gzip"
	if c, ok := o.Attrs["compression"]; ok {
		if _, known := compressions[c]; !known {
			return fmt.Errorf("unknown compression %q (supported: uncompressed, gzip, estargz, zstd)", c)
		}
		comp = c
	}
	if lv, ok := o.Attrs["compression-level"]; ok {
		n, err := strconv.Atoi(lv)
		rng := compressions[comp]
		if err != nil {
			return fmt.Errorf("compression-level=%q is not an integer", lv)
		}
		if comp == "uncompressed" {
			return errors.New("compression-level does not apply to compression=uncompressed")
		}
		if n < rng[0] || n > rng[1] {
			return fmt.Errorf("compression-level=%d is out of range for %s (%d-%d)", n, comp, rng[0], rng[1])
		}
	}
	if names, ok := o.Attrs["name"]; ok {
		if !o.IsImage() {
			return errors.New("name= only applies to image outputs (image, registry, oci, docker)")
		}
		for _, n := range strings.Split(names, ",") {
			if n == "" {
				return fmt.Errorf("empty image name in name=%q", names)
			}
			if _, err := reference.ParseNormalizedNamed(n); err != nil {
				return fmt.Errorf("name %q: %w", n, err)
			}
		}
	}
	if o.Dest == "-" && o.IsDir() {
		return fmt.Errorf("type=%s writes a directory and cannot use dest=-; use type=tar", o.Type)
	}
	return nil
}

// checkOutputSet checks the outputs together; labels[i] names outs[i].
// With tags, an image output without name= is named by them.
func checkOutputSet(outs []Output, labels []string, tagged bool) error {
	var toStdout, loads, stores int
	for i, o := range outs {
		if o.Dest == "-" {
			toStdout++
		}
		if o.IsLoad() {
			loads++
		}
		if o.IsDir() && o.Type != OutputLocal {
			stores++
		}
		if o.IsPush() && o.Attrs["name"] == "" && !tagged {
			return errdefs.Invalidf("%s: a tag is needed when pushing to a registry (give -t NAME, or name=NAME in -o type=image)", labels[i])
		}
	}
	switch {
	case toStdout > 1:
		return errdefs.Invalidf("-o: only one output can be written to stdout (dest=-)")
	case loads > 1:
		return errdefs.Invalidf("--load: only one output can load into the Docker engine")
	case stores > 1:
		// BuildKit (v0.26 through v0.34) names the session's OCI layout store "export".
		return errdefs.Invalidf("-o: only one OCI layout directory output (tar=false) is supported per build")
	}
	return nil
}

// checkAttest checks one attestation's type and attributes.
func checkAttest(a Attest) error {
	switch a.Type {
	case "":
		return errors.New("missing type= (provenance or sbom)")
	case AttestProvenance:
		if m, ok := a.Attrs["mode"]; ok && m != "min" && m != "max" {
			return fmt.Errorf("unknown provenance mode %q (supported: min, max)", m)
		}
	case AttestSBOM:
		if g, ok := a.Attrs["generator"]; ok {
			if _, err := reference.ParseNormalizedNamed(g); err != nil {
				return fmt.Errorf("generator %q is not an image reference: %w", g, err)
			}
		}
	default:
		return fmt.Errorf("unknown attestation type %q (supported: provenance, sbom)", a.Type)
	}
	return nil
}

// cacheBoolAttrs are cache attributes BuildKit parses as booleans.
var cacheBoolAttrs = []string{"registry.insecure", "oci-mediatypes", "image-manifest", "ignore-error", "force-compression"}

// checkCache checks one registry or inline cache (export: for --cache-to).
// Ignored backends (see [IgnoredCache]) are not checked.
func checkCache(c Cache, export bool) error {
	if _, ok := IgnoredCache(c.Type); ok {
		return nil
	}
	switch c.Type {
	case "":
		return errors.New("missing type= (supported: registry, inline; gha, local, s3 and azblob are accepted and ignored)")
	case CacheRegistry:
		ref, ok := c.Attrs["ref"]
		if !ok || ref == "" {
			return errors.New("type=registry needs ref=IMAGE")
		}
		if _, err := reference.ParseNormalizedNamed(ref); err != nil {
			return fmt.Errorf("ref %q: %w", ref, err)
		}
	case CacheInline:
		if !export {
			return errors.New("type=inline is only for --cache-to (read an inline cache with type=registry,ref=IMAGE)")
		}
	default:
		return fmt.Errorf("unknown cache type %q (supported: registry, inline; gha, local, s3 and azblob are accepted and ignored)", c.Type)
	}
	// mode= only matters to exports; an import ignores it, as in buildx,
	// so one value can serve both flags.
	if m, ok := c.Attrs["mode"]; ok && m != "min" && m != "max" {
		return fmt.Errorf("unknown mode %q (supported: min, max)", m)
	}
	for _, k := range cacheBoolAttrs {
		if val, ok := c.Attrs[k]; ok && val != "" {
			if _, err := strconv.ParseBool(val); err != nil {
				return fmt.Errorf("%s=%q is not a boolean", k, val)
			}
		}
	}
	if comp, ok := c.Attrs["compression"]; ok {
		if _, known := compressions[comp]; !known {
			return fmt.Errorf("unknown compression %q (supported: uncompressed, gzip, estargz, zstd)", comp)
		}
	}
	return nil
}

// checkNetwork checks RUN's network mode as the request holds it.
func checkNetwork(n string) bool { return n == "" || n == "none" }

// checkCall checks a frontend method.
func checkCall(c Call) error {
	switch c.Method {
	case "":
		if c.Format != "" || c.IgnoreStatus {
			return errors.New("format and ignorestatus apply to check, outline and targets")
		}
	case "check", "outline", "targets":
	default:
		return fmt.Errorf("unknown method %q (supported: build, check, outline, targets)", c.Method)
	}
	if c.Format != "" && c.Format != "json" {
		return fmt.Errorf("unknown format %q (supported: text, json)", c.Format)
	}
	return nil
}

// checkLintFailOn checks a --lint-fail-on level ("" is error).
func checkLintFailOn(l string) bool {
	switch l {
	case "", LintFailOnError, LintFailOnWarn, LintFailOnNone:
		return true
	}
	return false
}

// ContextName normalizes a named context's name the way buildx does, so
// "docker.io/library/alpine:latest" matches `FROM alpine`.
func ContextName(raw string) (string, error) {
	named, err := reference.ParseNormalizedNamed(raw)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(reference.FamiliarString(named), ":latest"), nil
}

// isRemoteContext reports whether v is a context the builder fetches itself.
func isRemoteContext(v string) bool {
	for _, p := range []string{"https://", "http://", "git://", "git@", "ssh://"} {
		if strings.HasPrefix(v, p) {
			return true
		}
	}
	return false
}

// String is c in --build-context's syntax (after NAME=).
func (c NamedContext) String() string {
	switch {
	case c.Image != "":
		return "docker-image://" + c.Image
	case c.OCILayout != "":
		return "oci-layout://" + c.OCILayout
	case c.URL != "":
		return c.URL
	}
	return c.Dir
}

// NamedContextOf reads a named context's value as --build-context and
// bake's contexts take it: docker-image://REF, oci-layout://PATH[:tag|@digest],
// a git or http(s) URL, or else a local directory. Errors are plain.
func NamedContextOf(v string) (NamedContext, error) {
	var c NamedContext
	switch {
	case strings.HasPrefix(v, "target:"):
		return c, errors.New("target: contexts are only supported by bake")
	case strings.HasPrefix(v, "docker-image://"):
		c.Image = strings.TrimPrefix(v, "docker-image://")
	case strings.HasPrefix(v, "oci-layout://"):
		c.OCILayout = strings.TrimPrefix(v, "oci-layout://")
	case isRemoteContext(v):
		c.URL = v
	default:
		c.Dir = v
	}
	return c, checkNamedContext(c)
}

// Resolved is s with its source chosen the way BuildKit's secret store
// chooses it when neither a file nor a variable is named: the variable ID
// when it is set, else the file ID.
func (s Secret) Resolved() Secret {
	if s.Src != "" || s.Env != "" || s.Value != nil {
		return s
	}
	if _, ok := os.LookupEnv(s.ID); ok {
		s.Env = s.ID
	} else {
		s.Src = s.ID
	}
	return s
}

// checkNamedContext checks that c is exactly one kind of context.
func checkNamedContext(c NamedContext) error {
	n := 0
	for _, v := range []string{c.Dir, c.Image, c.OCILayout, c.URL} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("give exactly one of a directory, an image, an OCI layout or a URL")
	}
	if c.Image != "" {
		if _, err := reference.ParseNormalizedNamed(c.Image); err != nil {
			return fmt.Errorf("invalid image reference %q: %w", c.Image, err)
		}
	}
	if c.URL != "" && !isRemoteContext(c.URL) {
		return fmt.Errorf("%q is not a git or http(s) URL", c.URL)
	}
	if c.URL != "" {
		// A git URL gets the build context's checks (git.go); an http(s)
		// URL that is not one is a file or tarball BuildKit downloads.
		if _, isGit, _ := dfgitutil.ParseGitRef(c.URL); isGit {
			if _, err := ParseGitURL(c.URL); err != nil {
				return err
			}
		}
	}
	return nil
}
