package bake

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	bx "github.com/docker/buildx/bake"
	"github.com/docker/buildx/util/buildflags"
	"github.com/docker/buildx/util/urlutil"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Build is one resolved target, translated into `kiln build` options.
type Build struct {
	// Name is the target's name.
	Name string
	// ProjectID is the project the file names for the target; "" means
	// the default project (--project, KILN_PROJECT_ID, kiln.json).
	ProjectID string
	// Requested is set for a target that was asked for; the others are
	// built only because a requested target uses them as a `target:`
	// context, and have no outputs.
	Requested bool
	// Options are the target's build options. `target:` contexts are not
	// among Options.BuildContexts: see Links.
	Options engine.Options
	// Links maps a named context of this target to the target whose
	// result it is (contexts = { app = "target:app" }). The caller builds
	// that target first and passes its result as the context.
	Links map[string]string
	// Warnings are target attributes kiln accepts but does not apply.
	Warnings []string
}

// Builds translates every target of d (sorted by name) into a Build.
// Files a target needs that are not on disk (dockerfile-inline) are
// written under tmpDir, which the caller removes after the bake. Options
// are not validated here; engine.Prepare does that.
func (d *Definition) Builds(tmpDir string) ([]*Build, error) {
	req := map[string]bool{}
	for _, n := range d.Requested {
		req[n] = true
	}
	var out []*Build
	for _, name := range sortedKeys(d.Targets) {
		b, err := translate(name, d.Targets[name], tmpDir)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", name, err)
		}
		b.ProjectID = d.ProjectIDs[name]
		b.Requested = req[name]
		out = append(out, b)
	}
	return out, nil
}

// translate turns one resolved buildx target into a Build, with buildx's
// path rules: the context is relative to the working directory, the
// dockerfile relative to the context (unless absolute or cwd://), named
// contexts relative to the working directory.
func translate(name string, t *bx.Target, tmpDir string) (*Build, error) {
	b := &Build{Name: name}
	o := &b.Options

	ctxPath := "."
	if t.Context != nil && *t.Context != "" {
		ctxPath = *t.Context
	}
	ctxPath = strings.TrimPrefix(ctxPath, "cwd://")
	switch {
	case ctxPath == "-":
		return nil, fmt.Errorf("context \"-\": a context from stdin is not allowed in bake: %w", errdefs.ErrInvalid)
	case urlutil.IsRemoteURL(ctxPath):
		return nil, fmt.Errorf("context %q: remote contexts are not supported by kiln bake; use a local directory: %w", ctxPath, errdefs.ErrInvalid)
	}
	o.ContextPath = filepath.Clean(ctxPath)

	if t.DockerfileInline != nil && *t.DockerfileInline != "" {
		dir := filepath.Join(tmpDir, "inline", name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("dockerfile-inline: %w", err)
		}
		p := filepath.Join(dir, "Dockerfile")
		if err := os.WriteFile(p, []byte(*t.DockerfileInline), 0o600); err != nil {
			return nil, fmt.Errorf("dockerfile-inline: %w", err)
		}
		o.Dockerfile = p
	} else {
		df := "Dockerfile"
		if t.Dockerfile != nil && *t.Dockerfile != "" {
			df = *t.Dockerfile
		}
		switch {
		case df == "-":
			return nil, fmt.Errorf("dockerfile \"-\": a Dockerfile from stdin is not allowed in bake: %w", errdefs.ErrInvalid)
		case strings.HasPrefix(df, "cwd://"):
			df = filepath.Clean(strings.TrimPrefix(df, "cwd://"))
		case !filepath.IsAbs(df):
			df = filepath.Join(o.ContextPath, df)
		}
		o.Dockerfile = df
	}

	o.BuildArgs = keyValues(t.Args)
	o.Labels = keyValues(t.Labels)
	o.Tags = slices.Clone(t.Tags)
	if t.Target != nil {
		o.Target = *t.Target
	}
	o.Platform = strings.Join(t.Platforms, ",")
	for _, s := range t.Secrets {
		o.Secrets = append(o.Secrets, s.String())
	}
	for _, s := range t.SSH {
		v := s.ID
		if len(s.Paths) > 0 {
			v += "=" + strings.Join(s.Paths, ",")
		}
		o.SSH = append(o.SSH, v)
	}

	annotations, err := buildflags.ParseAnnotations(t.Annotations)
	if err != nil {
		return nil, fmt.Errorf("annotations: %v: %w", err, errdefs.ErrInvalid)
	}
	for _, e := range t.Outputs {
		if e == nil {
			continue
		}
		if len(annotations) > 0 && e.Type != "cacheonly" {
			c := *e
			c.Attrs = maps.Clone(e.Attrs)
			if c.Attrs == nil {
				c.Attrs = map[string]string{}
			}
			for k, v := range annotations {
				c.Attrs[k.String()] = v
			}
			e = &c
		}
		o.Outputs = append(o.Outputs, e.String())
	}
	for _, e := range t.CacheFrom {
		if e != nil {
			o.CacheFrom = append(o.CacheFrom, e.String())
		}
	}
	for _, e := range t.CacheTo {
		if e != nil {
			o.CacheTo = append(o.CacheTo, e.String())
		}
	}
	if t.NoCache != nil {
		o.NoCache = *t.NoCache
	}
	o.NoCacheFilter = slices.Clone(t.NoCacheFilter)
	if t.NetworkMode != nil {
		o.Network = *t.NetworkMode
	}
	for _, a := range t.Attest {
		if a != nil {
			o.Attests = append(o.Attests, a.String())
		}
	}
	if t.Call != nil && *t.Call != "" && *t.Call != "build" {
		return nil, fmt.Errorf("call %q: kiln bake only builds (use `kiln build --call=%s` for one target): %w", *t.Call, *t.Call, errdefs.ErrInvalid)
	}

	for _, cname := range sortedKeys(t.Contexts) {
		v := t.Contexts[cname]
		if dep, ok := strings.CutPrefix(v, "target:"); ok {
			if b.Links == nil {
				b.Links = map[string]string{}
			}
			b.Links[cname] = dep
			continue
		}
		o.BuildContexts = append(o.BuildContexts, cname+"="+strings.TrimPrefix(v, "cwd://"))
	}

	// Accepted, not applied: say so rather than build something else
	// silently.
	if t.Pull != nil && *t.Pull {
		b.Warnings = append(b.Warnings, "pull: not supported by kiln; base images are resolved as usual")
	}
	if t.ShmSize != nil {
		b.Warnings = append(b.Warnings, "shm-size: not supported by kiln; ignored")
	}
	if len(t.Ulimits) > 0 {
		b.Warnings = append(b.Warnings, "ulimits: not supported by kiln; ignored")
	}
	if len(t.ExtraHosts) > 0 {
		b.Warnings = append(b.Warnings, "extra-hosts: not supported by kiln; ignored")
	}
	return b, nil
}

// keyValues turns an args or labels map into sorted K=V values; unset
// (null) values are left out, as buildx does.
func keyValues(m map[string]*string) []string {
	var out []string
	for _, k := range sortedKeys(m) {
		if v := m[k]; v != nil {
			out = append(out, k+"="+*v)
		}
	}
	return out
}

// ProjectBuilds are the targets of one project: they are built as one kiln
// build on that project's builders.
type ProjectBuilds struct {
	ProjectID string
	Builds    []*Build // sorted by name
}

// NeedsDefaultProject reports whether some build has no project of its own.
func NeedsDefaultProject(builds []*Build) bool {
	return slices.ContainsFunc(builds, func(b *Build) bool { return b.ProjectID == "" })
}

// Group sorts builds by project (defaultProject for those without one),
// projects sorted by id. A `target:` context must name a target of the
// same project: the dependency's result is handed over on that project's
// builders, and a project's cache never feeds another's.
func Group(builds []*Build, defaultProject string) ([]ProjectBuilds, error) {
	project := map[string]string{}
	for _, b := range builds {
		p := b.ProjectID
		if p == "" {
			p = defaultProject
		}
		if p == "" {
			return nil, fmt.Errorf("target %q: no project (set project_id in the bake file, or give --project): %w", b.Name, errdefs.ErrInvalid)
		}
		project[b.Name] = p
	}
	byProject := map[string][]*Build{}
	for _, b := range builds {
		for _, cname := range sortedKeys(b.Links) {
			dep := b.Links[cname]
			dp, ok := project[dep]
			switch {
			case !ok:
				return nil, fmt.Errorf("target %q: context %q: target %q is not part of this bake: %w", b.Name, cname, dep, errdefs.ErrInvalid)
			case dp != project[b.Name]:
				return nil, fmt.Errorf("target %q (project %s): context %q uses target %q of another project (%s); a target: context must name a target of the same project: %w",
					b.Name, project[b.Name], cname, dep, dp, errdefs.ErrInvalid)
			}
		}
		byProject[project[b.Name]] = append(byProject[project[b.Name]], b)
	}
	var out []ProjectBuilds
	for _, p := range sortedKeys(byProject) {
		bs := byProject[p]
		sort.Slice(bs, func(i, j int) bool { return bs[i].Name < bs[j].Name })
		out = append(out, ProjectBuilds{ProjectID: p, Builds: bs})
	}
	return out, nil
}
