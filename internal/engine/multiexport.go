package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/ociindex"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// How one platform's solve writes one of the user's outputs.
const (
	partInPlace = iota // written where the user asked (type=local subdirectory), or nothing to merge
	partTar            // a tar file, later combined under a per-platform directory
	partOCI            // an OCI layout directory, later merged into one index
	partPush           // pushed by digest, later named by an index pushed under the tags
)

// platformPlan is one platform's share of the user's outputs: the export
// entries its solve runs (one per user export, in the same order) and, for
// each, where the part to merge lands.
type platformPlan struct {
	platform string
	exports  []client.ExportEntry
	kinds    []int
	parts    []string // temp file or directory of a partTar / partOCI
}

// planPlatformExports derives a platform's export entries from the user's
// (as the single-platform solve would run them). Temporary parts go under
// work; i numbers the platform.
func planPlatformExports(work string, i int, target string, user []client.ExportEntry) (*platformPlan, error) {
	p := &platformPlan{platform: target}
	pl, err := platform.Parse(target)
	if err != nil {
		return nil, err
	}
	for j, ue := range user {
		e := ue
		e.Attrs = maps.Clone(ue.Attrs)
		if e.Attrs == nil {
			e.Attrs = map[string]string{}
		}
		kind, part := partInPlace, ""
		switch ue.Type {
		case client.ExporterLocal:
			e.OutputDir = filepath.Join(ue.OutputDir, pl.Dir())
		case client.ExporterTar:
			kind, part = partTar, filepath.Join(work, fmt.Sprintf("tar-%d-%d.tar", j, i))
			e.Output = fileOutput(part)
		case client.ExporterOCI:
			kind, part = partOCI, filepath.Join(work, fmt.Sprintf("oci-%d-%d", j, i))
			e.Output, e.OutputDir, e.OutputStore = nil, part, nil
			e.Attrs["tar"] = "false"
		case client.ExporterDocker:
			// Prepare refuses this (buildreq.Request.Validate).
			return nil, errdefs.Invalidf("docker exporter does not currently support exporting manifest lists")
		case client.ExporterImage:
			if !attrTrue(ue.Attrs, "push") {
				break // stored on each builder as it is; nothing to merge
			}
			repos, err := repositories(ue.Attrs["name"])
			if err != nil {
				return nil, errdefs.InvalidWrapf(err, "--push")
			}
			kind = partPush
			e.Attrs["name"] = strings.Join(repos, ",")
			e.Attrs["push-by-digest"] = "true"
			delete(e.Attrs, "name-canonical")
		}
		p.exports = append(p.exports, e)
		p.kinds = append(p.kinds, kind)
		p.parts = append(p.parts, part)
	}
	return p, nil
}

// finishPlatformExports merges the parts of every platform into the user's
// outputs, in the order of the user's exports, and returns the build's
// exporter response: the merged image's digest, descriptor and names (what
// --iidfile and --metadata-file read). Outputs that hold no image (local,
// tar) add nothing to it. Index pushes authenticate with kc.
func finishPlatformExports(ctx context.Context, kc authn.Keychain, user []client.ExportEntry, plans []*platformPlan, responses []*client.SolveResponse) (*client.SolveResponse, error) {
	resp := map[string]string{}
	for j, ue := range user {
		switch plans[0].kinds[j] {
		case partTar:
			var parts []platformTar
			for _, p := range plans {
				parts = append(parts, platformTar{Platform: p.platform, File: p.parts[j]})
			}
			if err := writeOutput(ue, resp, func(w io.Writer) error { return combinePlatformTars(w, parts) }); err != nil {
				return nil, fmt.Errorf("-o type=tar: %w", err)
			}
		case partOCI:
			if err := finishOCI(ue, j, plans, resp); err != nil {
				return nil, fmt.Errorf("-o type=oci: %w", err)
			}
		case partPush:
			var imgs []platformImage
			for i, p := range plans {
				d, err := responseDescriptor(responses[i])
				if err != nil {
					return nil, fmt.Errorf("push of %s: %w", p.platform, err)
				}
				imgs = append(imgs, platformImage{Platform: p.platform, Desc: d})
			}
			names, err := imageNames(ue.Attrs["name"])
			if err != nil {
				return nil, errdefs.InvalidWrapf(err, "--push")
			}
			desc, err := pushIndex(ctx, kc, names, imgs, attrTrue(ue.Attrs, "registry.insecure"))
			if err != nil {
				return nil, err
			}
			setImageResponse(resp, desc, names)
		}
	}
	return &client.SolveResponse{ExporterResponse: resp}, nil
}

// finishOCI merges the platforms' OCI layouts for user export j and writes
// the result where the user asked: a tar archive (file or stdout) or, with
// tar=false, a layout directory.
func finishOCI(ue client.ExportEntry, j int, plans []*platformPlan, resp map[string]string) error {
	var layouts []platformLayout
	for _, p := range plans {
		layouts = append(layouts, platformLayout{Platform: p.platform, Dir: p.parts[j]})
	}
	names, err := imageNames(ue.Attrs["name"])
	if err != nil {
		return errdefs.InvalidWrapf(err, "name=")
	}
	dst := ue.OutputDir
	if ue.Output != nil || dst == "" {
		dst = filepath.Join(filepath.Dir(plans[0].parts[j]), fmt.Sprintf("oci-%d-merged", j))
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	desc, err := mergeOCILayouts(dst, layouts)
	if err != nil {
		return err
	}
	setImageResponse(resp, desc, names)
	if ue.Output == nil {
		// The user's layout directory: add the index to its index.json the
		// way BuildKit's client does for a single platform (by name, or
		// tagged latest), keeping what else it lists.
		refs := []ociindex.NameOrTag{ociindex.Tag("latest")}
		if len(names) > 0 {
			refs = refs[:0]
			for _, n := range names {
				refs = append(refs, ociindex.Name(n))
			}
		}
		return ociindex.NewStoreIndex(dst).Put(desc, refs...)
	}
	if err := writeOCILayoutIndex(dst, desc, names); err != nil {
		return err
	}
	return writeOutput(ue, resp, func(w io.Writer) error { return tarOCILayout(w, dst) })
}

// writeOutput opens the user's output through its own Output function (a
// file at dest, or stdout) and writes it with write.
func writeOutput(ue client.ExportEntry, resp map[string]string, write func(io.Writer) error) error {
	if ue.Output == nil {
		return fmt.Errorf("no output to write to")
	}
	w, err := ue.Output(maps.Clone(resp))
	if err != nil {
		return err
	}
	err = write(w)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// fileOutput is an exporter Output that writes to path.
func fileOutput(path string) func(map[string]string) (io.WriteCloser, error) {
	return func(map[string]string) (io.WriteCloser, error) { return os.Create(path) }
}

// responseDescriptor reads the image descriptor an image exporter
// reported (containerimage.descriptor, or at least containerimage.digest).
func responseDescriptor(r *client.SolveResponse) (ocispecs.Descriptor, error) {
	if r == nil {
		return ocispecs.Descriptor{}, fmt.Errorf("no exporter response")
	}
	var d ocispecs.Descriptor
	if v := r.ExporterResponse[exptypes.ExporterImageDescriptorKey]; v != "" {
		dt, err := base64.StdEncoding.DecodeString(v)
		if err == nil {
			err = json.Unmarshal(dt, &d)
		}
		if err != nil {
			return ocispecs.Descriptor{}, fmt.Errorf("exporter response %s: %w", exptypes.ExporterImageDescriptorKey, err)
		}
	}
	if d.Digest == "" {
		if v := r.ExporterResponse[exptypes.ExporterImageDigestKey]; v != "" {
			d.Digest = digest.Digest(v)
		}
	}
	if err := d.Digest.Validate(); err != nil {
		return ocispecs.Descriptor{}, fmt.Errorf("the exporter reported no valid image digest: %w", err)
	}
	return d, nil
}

// setImageResponse records the merged image in resp under the keys
// BuildKit's image exporters use.
func setImageResponse(resp map[string]string, desc ocispecs.Descriptor, names []string) {
	resp[exptypes.ExporterImageDigestKey] = desc.Digest.String()
	d := ocispecs.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
	if dt, err := json.Marshal(d); err == nil {
		resp[exptypes.ExporterImageDescriptorKey] = base64.StdEncoding.EncodeToString(dt)
	}
	if len(names) > 0 {
		resp[exptypes.ExporterImageNameKey] = strings.Join(names, ",")
	}
}

// attrTrue reports whether the boolean exporter attribute k is set and
// true ("" counts as true, as BuildKit reads "push" and friends).
func attrTrue(attrs map[string]string, k string) bool {
	v, ok := attrs[k]
	if !ok {
		return false
	}
	if v == "" {
		return true
	}
	b, _ := strconv.ParseBool(v)
	return b
}
