package bake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/platforms"
	bx "github.com/docker/buildx/bake"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// DefaultFiles are the files looked up in the working directory, in this
// order, when no -f is given. Every one that exists is read; a later file
// overrides what an earlier one set, as in buildx.
var DefaultFiles = []string{
	"compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml",
	"docker-bake.json", "docker-bake.override.json",
	"docker-bake.hcl", "docker-bake.override.hcl",
}

// LoadOptions say what to read and which targets to resolve.
type LoadOptions struct {
	// Files are the -f values, in order; "-" reads Stdin. None: the
	// DefaultFiles that exist in the working directory.
	Files []string
	// Stdin is read for a file named "-".
	Stdin io.Reader
	// Targets are the targets and groups asked for (glob patterns allowed,
	// as in buildx); none means "default".
	Targets []string
	// Overrides are --set values ("app.tags=x", "*.platform=linux/arm64",
	// "app.args.V=1", "app.project_id=P") plus the ones the CLI derives
	// from its own flags (e.g. "*.push=true").
	Overrides []string
}

// Definition is a resolved bake: what `--print` shows and what is built.
type Definition struct {
	// Files are the names of the files read, in order.
	Files []string
	// Targets holds every target that will be built: the ones asked for
	// and the ones only needed through a `target:` context (whose outputs
	// buildx replaces with cacheonly).
	Targets map[string]*bx.Target
	// Groups are the groups involved, as buildx reports them; "default"
	// lists what was asked for.
	Groups map[string]*bx.Group
	// Requested are the names of the targets asked for (groups expanded),
	// sorted. Only these are loaded, pushed or saved.
	Requested []string
	// ProjectIDs maps a target to the project its file names for it
	// (project_id, x-depot.project-id or x-kiln.project-id, inherited
	// through `inherits`, overridden with --set T.project_id=P). A target
	// missing here uses the default project.
	ProjectIDs map[string]string
}

// Load reads and resolves the bake files. Everything a user can get wrong
// in the files or the --set values — syntax (the error names file:line),
// an unknown target or variable, cyclic inherits or contexts — is
// reported here, before anything is built. Errors wrap errdefs.ErrInvalid;
// HCL errors also carry the offending source (see
// github.com/moby/buildkit/solver/errdefs.Sources) for printing.
func Load(ctx context.Context, o LoadOptions) (*Definition, error) {
	files, err := readFiles(o.Files, o.Stdin)
	if err != nil {
		return nil, err
	}
	targets := slices.Clone(o.Targets) // ReadTargets rewrites its argument
	if len(targets) == 0 {
		targets = []string{"default"}
	}
	overrides, pidOverrides, err := splitProjectOverrides(o.Overrides)
	if err != nil {
		return nil, err
	}
	defaults := defaultVars()

	// buildx records in ent which paths and entitlements the targets use,
	// to ask the user before it builds; kiln reads and writes only what the
	// user's own files and flags name, and grants no entitlements.
	// No --var values (nil): variables come from the environment, as in
	// buildx without --var; paths stay relative to the working directory
	// (no ParseOpt.FileRelativePaths, buildx's default).
	ent := &bx.EntitlementConf{}
	tgts, grps, err := bx.ReadTargets(ctx, files, targets, overrides, defaults, nil, ent)
	if err != nil {
		return nil, invalid(err)
	}
	if len(tgts) == 0 {
		return nil, fmt.Errorf("no targets to build in %s (asked for %s): %w", strings.Join(names(files), ", "), strings.Join(o.Targets, ", "), errdefs.ErrInvalid)
	}
	// buildx passes SOURCE_DATE_EPOCH on to every target that does not set
	// it, so the images are reproducible the same way.
	if v, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok && v != "" {
		for _, t := range tgts {
			if _, set := t.Args["SOURCE_DATE_EPOCH"]; set {
				continue
			}
			if t.Args == nil {
				t.Args = map[string]*string{}
			}
			t.Args["SOURCE_DATE_EPOCH"] = &v
		}
	}

	meta, err := readProjectMeta(files, defaults)
	if err != nil {
		return nil, err
	}
	d := &Definition{
		Files:     names(files),
		Targets:   tgts,
		Groups:    grps,
		Requested: requested(tgts, grps),
	}
	for _, name := range sortedKeys(tgts) {
		if err := meta.checkInherits(name); err != nil {
			return nil, err
		}
	}
	if d.ProjectIDs, err = meta.resolve(sortedKeys(tgts), pidOverrides); err != nil {
		return nil, err
	}
	return d, nil
}

// readFiles reads the -f files, or the default files that exist.
func readFiles(flagFiles []string, stdin io.Reader) ([]bx.File, error) {
	if len(flagFiles) > 0 {
		if n := slices.Index(flagFiles, "-"); n >= 0 && slices.Index(flagFiles[n+1:], "-") >= 0 {
			return nil, fmt.Errorf("-f -: stdin can be read only once: %w", errdefs.ErrInvalid)
		}
		if slices.Contains(flagFiles, "-") && stdin == nil {
			return nil, fmt.Errorf("-f -: no stdin to read the bake file from: %w", errdefs.ErrInvalid)
		}
		for _, f := range flagFiles {
			if f == "" {
				return nil, fmt.Errorf("-f: empty file name: %w", errdefs.ErrInvalid)
			}
		}
		files, err := bx.ReadLocalFiles(flagFiles, stdin, nil)
		if err != nil {
			return nil, invalid(fmt.Errorf("-f: %w", err))
		}
		return files, nil
	}
	var present []string
	for _, f := range DefaultFiles {
		fi, err := os.Stat(f)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return nil, invalid(err)
		case fi.IsDir():
			continue
		}
		present = append(present, f)
	}
	if len(present) == 0 {
		wd, _ := os.Getwd()
		return nil, fmt.Errorf("no bake file in %s: looked for %s (or give -f FILE): %w", wd, strings.Join(DefaultFiles, ", "), errdefs.ErrInvalid)
	}
	files, err := bx.ReadLocalFiles(present, nil, nil)
	if err != nil {
		return nil, invalid(err)
	}
	return files, nil
}

// defaultVars are the built-in variables buildx defines for every file.
func defaultVars() map[string]string {
	return map[string]string{
		"BAKE_CMD_CONTEXT":    "cwd://",
		"BAKE_LOCAL_PLATFORM": platforms.Format(platforms.DefaultSpec()),
	}
}

// requested lists the targets asked for: ReadTargets puts the names asked
// for (globs matched) into the "default" group, and every group they name
// is in grps. Targets reachable only through a `target:` context are left
// out.
func requested(tgts map[string]*bx.Target, grps map[string]*bx.Group) []string {
	out := map[string]bool{}
	seen := map[string]bool{}
	var walk func(name string)
	walk = func(name string) {
		if g, ok := grps[name]; ok && !seen[name] {
			seen[name] = true
			for _, t := range g.Targets {
				walk(t)
			}
			return
		}
		if _, ok := tgts[name]; ok {
			out[name] = true
		}
	}
	walk("default")
	return sortedKeys(out)
}

// splitProjectOverrides takes the --set values that set project_id out of
// the ones buildx understands (buildx refuses a key it does not know).
func splitProjectOverrides(in []string) (rest []string, pid []projectOverride, err error) {
	for _, v := range in {
		key, val, hasValue := strings.Cut(v, "=")
		pattern, field, ok := strings.Cut(key, ".")
		if !ok || field != projectAttr {
			rest = append(rest, v)
			continue
		}
		if !hasValue || strings.HasSuffix(pattern, "+") {
			return nil, nil, fmt.Errorf("--set %q: want TARGET.%s=PROJECT: %w", v, projectAttr, errdefs.ErrInvalid)
		}
		if _, err := path.Match(pattern, ""); err != nil {
			return nil, nil, fmt.Errorf("--set %q: bad target pattern %q: %w", v, pattern, errdefs.ErrInvalid)
		}
		if err := checkProjectID(val); err != nil {
			return nil, nil, fmt.Errorf("--set %q: %w", v, err)
		}
		pid = append(pid, projectOverride{pattern: pattern, value: val})
	}
	return rest, pid, nil
}

// invalid marks an error from buildx's parser as the user's, keeping its
// text (which names file:line) and the source it carries.
func invalid(err error) error {
	return &userError{err: err}
}

type userError struct{ err error }

func (e *userError) Error() string   { return e.err.Error() }
func (e *userError) Unwrap() []error { return []error{e.err, errdefs.ErrInvalid} }

func names(files []bx.File) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.Name
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// SetDefaultProject names id as the project of every target that names
// none of its own (what --print shows: where each target would build).
func (d *Definition) SetDefaultProject(id string) {
	if d.ProjectIDs == nil {
		d.ProjectIDs = map[string]string{}
	}
	for name := range d.Targets {
		if _, ok := d.ProjectIDs[name]; !ok {
			d.ProjectIDs[name] = id
		}
	}
}

// SkippedLoad is a target a load override asks to load that loads
// nothing, and the output that keeps it from loading.
type SkippedLoad struct{ Target, Output string }

func (l SkippedLoad) String() string {
	return fmt.Sprintf("target %q (output type=%s)", l.Target, l.Output)
}

// LoadSkipped lists the requested targets that a load override (--load,
// --set T.load=true) asks to load but that will load nothing: buildx adds
// the docker output only to a target whose outputs are all images (image,
// registry, oci, docker), and leaves one that writes local files or a
// tarball as it is, silently.
func (d *Definition) LoadSkipped(overrides []string) []SkippedLoad {
	var patterns []string
	for _, o := range overrides {
		key, value, ok := strings.Cut(o, "=")
		pattern, attr, dotted := strings.Cut(key, ".")
		if !ok || !dotted || attr != "load" {
			continue
		}
		if on, err := strconv.ParseBool(value); err == nil && on {
			patterns = append(patterns, pattern)
		}
	}
	var out []SkippedLoad
	for _, name := range d.Requested {
		t := d.Targets[name]
		if t == nil || !slices.ContainsFunc(patterns, func(p string) bool { ok, _ := path.Match(p, name); return ok }) {
			continue
		}
		for _, e := range t.Outputs {
			if e == nil {
				continue
			}
			if e.Type != "image" && e.Type != "registry" && e.Type != "oci" && e.Type != "docker" {
				out = append(out, SkippedLoad{Target: name, Output: e.Type})
				break
			}
		}
	}
	return out
}
