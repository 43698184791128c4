package engine

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/buildkit/client"
)

// exporterRegistry is buildx's alias for an image output that pushes.
const exporterRegistry = "registry"

// supportedOutputs lists the -o types, for messages.
const supportedOutputs = "local, tar, oci, docker, image, registry, cacheonly"

// outputSpec is one parsed output: an -o value, --push or --load.
type outputSpec struct {
	typ string // client.ExporterLocal, ExporterTar, ExporterOCI, ExporterDocker or ExporterImage
	// dest is an absolute path, "-" for stdout, or "" for an image output
	// and for a docker output without dest (a load into the Docker engine).
	dest string
	// attrs are the exporter attributes, without type and dest.
	attrs map[string]string
	// flag is how the user asked for it ("-o VALUE", "--push", "--load"),
	// for messages.
	flag string
	// save marks the push to kiln's registry that --save adds (save.go).
	save bool
}

// isLoad reports whether o loads the image into the local Docker engine.
func (o *outputSpec) isLoad() bool { return o.typ == client.ExporterDocker && o.dest == "" }

// isPush reports whether o pushes to a registry.
func (o *outputSpec) isPush() bool {
	if o.typ != client.ExporterImage {
		return false
	}
	v, ok := o.attrs["push"]
	b, _ := strconv.ParseBool(v)
	return ok && (v == "" || b)
}

// isImage reports whether o produces an image (and so an image digest).
func (o *outputSpec) isImage() bool {
	switch o.typ {
	case client.ExporterImage, client.ExporterOCI, client.ExporterDocker:
		return true
	}
	return false
}

// dir reports whether o writes a directory rather than a file: type=local,
// and type=oci or type=docker with tar=false (an OCI layout).
func (o *outputSpec) dir() bool {
	if o.typ == client.ExporterLocal {
		return true
	}
	if o.typ == client.ExporterOCI || o.typ == client.ExporterDocker {
		if v, ok := o.attrs["tar"]; ok {
			b, err := strconv.ParseBool(v)
			return err == nil && !b
		}
	}
	return false
}

// Output describes one of the build's outputs, for display and for the
// server's build record.
type Output struct {
	// Type is the BuildKit exporter: "local", "tar", "oci", "docker" or
	// "image" (type=registry and --push are "image" with Push set).
	Type string
	// Dest is the absolute destination, "-" for stdout, or "" for an image
	// output and a Docker load.
	Dest string
	// Names are the image names the output carries (from name= or -t).
	Names []string
	// Push is set when the image is pushed to a registry.
	Push bool
	// Load is set when the image is loaded into the local Docker engine.
	Load bool
	// Save is set for the push to kiln's registry that --save adds
	// ([Request.AddSave]); Push is set too.
	Save bool
}

// Outputs lists the build's outputs in the order they were given.
func (r *Request) Outputs() []Output {
	out := make([]Output, 0, len(r.outputs))
	for _, o := range r.outputs {
		var names []string
		if n := o.attrs["name"]; n != "" {
			names = strings.Split(n, ",")
		}
		out = append(out, Output{Type: o.typ, Dest: o.dest, Names: names, Push: o.isPush(), Load: o.isLoad(), Save: o.save})
	}
	return out
}

// Loads reports whether the build loads its image into the local Docker
// engine (--load, or -o type=docker without dest).
func (r *Request) Loads() bool {
	return slices.ContainsFunc(r.outputs, (*outputSpec).isLoad)
}

// Pushes reports whether the build pushes its image to a registry.
func (r *Request) Pushes() bool {
	return slices.ContainsFunc(r.outputs, (*outputSpec).isPush)
}

// ProducesImage reports whether some output produces an image, so that
// --iidfile has something to write.
func (r *Request) ProducesImage() bool {
	return slices.ContainsFunc(r.outputs, (*outputSpec).isImage)
}

// CheckLoadPlatforms is the check buildx makes for --load: the Docker
// engine keeps one platform per image name, so a load of a multi-platform
// build is refused before anything runs. platforms are the --platform
// values (comma-separated lists are split).
func CheckLoadPlatforms(load bool, platforms []string) error {
	if !load {
		return nil
	}
	var all []string
	for _, p := range platforms {
		for _, q := range strings.Split(p, ",") {
			if q = strings.TrimSpace(q); q != "" {
				all = append(all, q)
			}
		}
	}
	if len(all) > 1 {
		return invalidf("--load: a multi-platform build (%s) cannot be loaded into Docker, which keeps one platform per image; "+
			"build one platform with --platform, or use --push or -o type=oci,dest=FILE for all of them", strings.Join(all, ","))
	}
	return nil
}

// parseOutputs parses -o values and the --push and --load shorthands the
// way buildx does: --push sets push=true on every image output (adding
// type=image when there is none), --load adds type=docker unless an output
// already loads. tags name every image output that has no name= of its own.
func (r *Request) parseOutputs(outs []string, push, load bool, tags []string, stdout io.Writer) error {
	var specs []*outputSpec
	for _, v := range outs {
		o, err := parseOutput(v)
		if err != nil {
			return err
		}
		if o != nil {
			specs = append(specs, o)
		}
	}
	if push {
		pushed := false
		for _, o := range specs {
			if o.typ == client.ExporterImage {
				o.attrs["push"] = "true"
				pushed = true
			}
		}
		if !pushed {
			specs = append(specs, &outputSpec{typ: client.ExporterImage, attrs: map[string]string{"push": "true"}, flag: "--push"})
		}
	}
	if load && !slices.ContainsFunc(specs, (*outputSpec).isLoad) {
		specs = append(specs, &outputSpec{typ: client.ExporterDocker, attrs: map[string]string{}, flag: "--load"})
	}

	var toStdout, loads, stores int
	for _, o := range specs {
		if err := o.validate(stdout); err != nil {
			return err
		}
		if o.dest == "-" {
			toStdout++
		}
		if o.isLoad() {
			loads++
		}
		if o.dir() && o.typ != client.ExporterLocal {
			stores++
		}
		if o.isImage() && len(tags) > 0 {
			if _, ok := o.attrs["name"]; !ok {
				o.attrs["name"] = strings.Join(tags, ",")
			}
		}
		if o.isPush() && o.attrs["name"] == "" {
			return invalidf("%s: a tag is needed when pushing to a registry (give -t NAME, or name=NAME in -o type=image)", o.flag)
		}
	}
	switch {
	case toStdout > 1:
		return invalidf("-o: only one output can be written to stdout (dest=-)")
	case loads > 1:
		return invalidf("--load: only one output can load into the Docker engine")
	case stores > 1:
		// BuildKit (v0.26 through v0.34) names the session's OCI layout store "export".
		return invalidf("-o: only one OCI layout directory output (tar=false) is supported per build")
	}
	r.outputs = specs
	return nil
}

// parseOutput parses one -o value. It returns nil for an empty value (as
// buildx skips them) and for type=cacheonly, buildx's way of asking for no
// output at all.
func parseOutput(v string) (*outputSpec, error) {
	o := &outputSpec{attrs: map[string]string{}, flag: "-o " + strconv.Quote(v)}
	switch {
	case v == "":
		return nil, invalidf("-o %q: empty output", v)
	case v == "-":
		o.typ, o.dest = client.ExporterTar, "-"
		return o, nil
	case !strings.Contains(v, "="):
		o.typ, o.dest = client.ExporterLocal, v
		return o, nil
	}
	fields, err := parseCSV(v)
	if err != nil {
		return nil, invalidWrap(err, "-o %q", v)
	}
	hasDest := false
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		k = strings.TrimSpace(strings.ToLower(k))
		if !ok || k == "" {
			return nil, invalidf("-o %q: field %q is not key=value", v, f)
		}
		switch k {
		case "type":
			o.typ = val
		case "dest":
			o.dest, hasDest = val, true
		default:
			if _, dup := o.attrs[k]; dup {
				return nil, invalidf("-o %q: %s= given more than once", v, k)
			}
			o.attrs[k] = val
		}
	}
	switch o.typ {
	case "":
		return nil, invalidf("-o %q: missing type= (supported: %s)", v, supportedOutputs)
	case "cacheonly":
		return nil, nil
	case exporterRegistry:
		o.typ = client.ExporterImage
		if p, ok := o.attrs["push"]; ok {
			if b, err := strconv.ParseBool(p); err != nil || !b {
				return nil, invalidf("-o %q: type=registry always pushes; push=%s contradicts it (use type=image)", v, p)
			}
		}
		o.attrs["push"] = "true"
	case client.ExporterLocal, client.ExporterTar, client.ExporterOCI, client.ExporterDocker, client.ExporterImage:
	default:
		return nil, invalidf("-o %q: unknown output type %q (supported: %s)", v, o.typ, supportedOutputs)
	}
	if hasDest && o.dest == "" {
		return nil, invalidf("-o %q: empty dest= (a path, or \"-\" for stdout)", v)
	}
	if o.typ == client.ExporterImage && hasDest {
		return nil, invalidf("-o %q: type=%s takes name= (an image reference), not dest=", v, o.typ)
	}
	if !hasDest {
		switch o.typ {
		case client.ExporterLocal:
			return nil, invalidf("-o %q: missing dest= (the directory to write)", v)
		case client.ExporterTar, client.ExporterOCI:
			// buildx writes these to stdout when no dest is given.
			if o.dir() {
				return nil, invalidf("-o %q: tar=false writes a directory; give dest=DIR", v)
			}
			o.dest = "-"
		case client.ExporterDocker:
			// No dest: load into the Docker engine, like --load.
			if o.dir() {
				return nil, invalidf("-o %q: tar=false writes a directory; give dest=DIR", v)
			}
		}
	}
	return o, nil
}

// boolAttrs are the exporter attributes BuildKit parses as booleans; a
// typo in one would otherwise only fail on the builder.
var boolAttrs = []string{
	"push", "push-by-digest", "registry.insecure", "unpack", "store", "name-canonical",
	"oci-mediatypes", "oci-artifact", "force-compression", "rewrite-timestamp", "tar", "platform-split",
}

// compressions are the layer compressions BuildKit's image exporters know,
// with the compression-level range each accepts.
var compressions = map[string][2]int{
	"uncompressed": {0, 0},
	"gzip":         {0, 9},
	"estargz":      {0, 9},
	"zstd":         {0, 22},
}

// validate checks o's attributes and destination.
func (o *outputSpec) validate(stdout io.Writer) error {
	for _, k := range boolAttrs {
		if v, ok := o.attrs[k]; ok && v != "" {
			if _, err := strconv.ParseBool(v); err != nil {
				return invalidf("%s: %s=%q is not a boolean (true or false)", o.flag, k, v)
			}
		}
	}
	comp := "gzip"
	if c, ok := o.attrs["compression"]; ok {
		if _, known := compressions[c]; !known {
			return invalidf("%s: unknown compression %q (supported: uncompressed, gzip, estargz, zstd)", o.flag, c)
		}
		comp = c
	}
	if lv, ok := o.attrs["compression-level"]; ok {
		n, err := strconv.Atoi(lv)
		rng := compressions[comp]
		if err != nil {
			return invalidf("%s: compression-level=%q is not an integer", o.flag, lv)
		}
		if comp == "uncompressed" {
			return invalidf("%s: compression-level does not apply to compression=uncompressed", o.flag)
		}
		if n < rng[0] || n > rng[1] {
			return invalidf("%s: compression-level=%d is out of range for %s (%d-%d)", o.flag, n, comp, rng[0], rng[1])
		}
	}
	if names, ok := o.attrs["name"]; ok {
		if !o.isImage() {
			return invalidf("%s: name= only applies to image outputs (image, registry, oci, docker)", o.flag)
		}
		for _, n := range strings.Split(names, ",") {
			if n == "" {
				return invalidf("%s: empty image name in name=%q", o.flag, names)
			}
			if _, err := reference.ParseNormalizedNamed(n); err != nil {
				return invalidWrap(err, "%s: name %q", o.flag, n)
			}
		}
	}

	switch o.dest {
	case "":
		return nil
	case "-":
		if o.dir() {
			return invalidf("%s: type=%s writes a directory and cannot use dest=-; use type=tar", o.flag, o.typ)
		}
		if stdout == nil {
			return invalidf("%s: dest=- needs a stdout to write to", o.flag)
		}
		if isTerminal(stdout) {
			return invalidf("%s: refusing to write an archive to a terminal; redirect stdout or give dest=<file>", o.flag)
		}
		return nil
	}
	abs, err := filepath.Abs(o.dest)
	if err != nil {
		return invalidWrap(err, "%s", o.flag)
	}
	o.dest = abs
	fi, err := os.Stat(abs)
	switch {
	case err != nil:
	case o.dir() && !fi.IsDir():
		return invalidf("%s: dest %s exists and is not a directory", o.flag, abs)
	case !o.dir() && fi.IsDir():
		return invalidf("%s: dest %s is a directory; type=%s writes a file", o.flag, abs, o.typ)
	}
	return nil
}
