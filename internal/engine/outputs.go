package engine

import (
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// outputSpec is one output of the build, its dest made absolute.
type outputSpec struct {
	buildreq.Output
	// flag is the output in -o syntax, for messages.
	flag string
	// save marks the push to kiln's registry that --save adds (save.go).
	save bool
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
		if n := o.Attrs["name"]; n != "" {
			names = strings.Split(n, ",")
		}
		out = append(out, Output{Type: o.Type, Dest: o.Dest, Names: names, Push: o.IsPush(), Load: o.IsLoad(), Save: o.save})
	}
	return out
}

// Loads reports whether the build loads its image into the local Docker
// engine (--load, or -o type=docker without dest).
func (r *Request) Loads() bool {
	return slices.ContainsFunc(r.outputs, (*outputSpec).IsLoad)
}

// Pushes reports whether the build pushes its image to a registry.
func (r *Request) Pushes() bool {
	return slices.ContainsFunc(r.outputs, (*outputSpec).IsPush)
}

// ProducesImage reports whether some output produces an image, so that
// --iidfile has something to write.
func (r *Request) ProducesImage() bool {
	return slices.ContainsFunc(r.outputs, (*outputSpec).IsImage)
}

// setOutputs takes the request's outputs (checked by Validate): the tags
// name every image output without a name= of its own, and destinations are
// checked (a file output must not be a directory and the other way round;
// dest=- needs a stdout).
func (r *Request) setOutputs(outs []buildreq.Output) error {
	for _, o := range outs {
		spec := &outputSpec{Output: o, flag: "-o " + strconv.Quote(o.String())}
		spec.Attrs = maps.Clone(o.Attrs)
		if spec.Attrs == nil {
			spec.Attrs = map[string]string{}
		}
		if _, named := spec.Attrs["name"]; !named && spec.IsImage() && len(r.tags) > 0 {
			spec.Attrs["name"] = strings.Join(r.tags, ",")
		}
		if err := spec.checkDest(r.stdout); err != nil {
			return err
		}
		r.outputs = append(r.outputs, spec)
	}
	return nil
}

// checkDest checks o's destination and makes it absolute.
func (o *outputSpec) checkDest(stdout io.Writer) error {
	switch o.Dest {
	case "":
		return nil
	case "-":
		if stdout == nil {
			return errdefs.Invalidf("%s: dest=- needs a stdout to write to", o.flag)
		}
		return nil
	}
	abs, err := filepath.Abs(o.Dest)
	if err != nil {
		return errdefs.InvalidWrapf(err, "%s", o.flag)
	}
	o.Dest = abs
	fi, err := os.Stat(abs)
	switch {
	case err != nil:
	case o.IsDir() && !fi.IsDir():
		return errdefs.Invalidf("%s: dest %s exists and is not a directory", o.flag, abs)
	case !o.IsDir() && fi.IsDir():
		return errdefs.Invalidf("%s: dest %s is a directory; type=%s writes a file", o.flag, abs, o.Type)
	}
	return nil
}
