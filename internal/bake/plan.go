package bake

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	bx "github.com/docker/buildx/bake"
	"github.com/docker/buildx/util/buildflags"
	"github.com/docker/buildx/util/urlutil"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// Build is one resolved target, translated into a build request.
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
	// Request is the target's build. `target:` contexts are not among
	// Request.NamedContexts: see Links.
	Request buildreq.Request
	// Links maps a named context of this target to the target whose
	// result it is (contexts = { app = "target:app" }). The caller builds
	// that target first and passes its result as the context.
	Links map[string]string
	// Warnings are target attributes kiln accepts but does not apply.
	Warnings []string
}

// Builds translates every target of d (sorted by name) into a Build.
// Requests are checked only as far as translating needs; engine.Prepare
// validates them.
func (d *Definition) Builds() ([]*Build, error) {
	req := map[string]bool{}
	for _, n := range d.Requested {
		req[n] = true
	}
	var out []*Build
	for _, name := range sortedKeys(d.Targets) {
		b, err := translate(name, d.Targets[name])
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", name, err)
		}
		b.ProjectID = d.ProjectIDs[name]
		b.Requested = req[name]
		out = append(out, b)
	}
	return out, nil
}

// translate turns one resolved buildx target into a Build.
func translate(name string, t *bx.Target) (*Build, error) {
	b := &Build{Name: name, Warnings: unsupported(t)}
	r := &b.Request
	var err error
	if r.Context, r.Dockerfile, err = contextAndDockerfile(t); err != nil {
		return nil, err
	}
	r.Args = keyValues(t.Args)
	r.Labels = keyValues(t.Labels)
	r.Tags = slices.Clone(t.Tags)
	if t.Target != nil {
		r.Target = *t.Target
	}
	if r.Platforms, err = platform.ParseTargets(t.Platforms); err != nil {
		return nil, err
	}
	for _, s := range t.Secrets {
		r.Secrets = append(r.Secrets, buildreq.Secret{ID: s.ID, Src: s.FilePath, Env: s.Env}.Resolved())
	}
	for _, s := range t.SSH {
		r.SSH = append(r.SSH, buildreq.SSH{ID: s.ID, Paths: slices.Clone(s.Paths)})
	}
	if r.Outputs, err = outputs(t); err != nil {
		return nil, err
	}
	r.CacheFrom, r.CacheTo = caches(t.CacheFrom), caches(t.CacheTo)
	if t.NoCache != nil {
		r.NoCache = *t.NoCache
	}
	r.NoCacheFilter = slices.Clone(t.NoCacheFilter)
	if t.NetworkMode != nil && *t.NetworkMode != "default" {
		r.Network = *t.NetworkMode
	}
	for _, a := range t.Attest {
		if a != nil {
			r.Attests = append(r.Attests, buildreq.Attest{Type: a.Type, Disabled: a.Disabled, Attrs: maps.Clone(a.Attrs)})
		}
	}
	if t.Call != nil && *t.Call != "" && *t.Call != "build" {
		return nil, fmt.Errorf("call %q: kiln bake only builds (use `kiln build --call=%s` for one target): %w", *t.Call, *t.Call, errdefs.ErrInvalid)
	}
	if err := namedContexts(t, b); err != nil {
		return nil, err
	}
	return b, nil
}

// contextAndDockerfile applies buildx's path rules: the context is
// relative to the working directory, the dockerfile relative to the
// context (unless absolute or cwd://).
func contextAndDockerfile(t *bx.Target) (buildreq.Context, buildreq.Dockerfile, error) {
	ctxPath := "."
	if t.Context != nil && *t.Context != "" {
		ctxPath = *t.Context
	}
	ctxPath = strings.TrimPrefix(ctxPath, "cwd://")
	switch {
	case ctxPath == "-":
		return buildreq.Context{}, buildreq.Dockerfile{}, fmt.Errorf("context \"-\": a context from stdin is not allowed in bake: %w", errdefs.ErrInvalid)
	case buildreq.IsGitURL(ctxPath):
		return gitContext(t, ctxPath)
	case urlutil.IsRemoteURL(ctxPath):
		return buildreq.Context{}, buildreq.Dockerfile{}, fmt.Errorf("context %q: only git URLs are supported as remote contexts (tarball URLs are not); use a git URL or a local directory: %w", ctxPath, errdefs.ErrInvalid)
	}
	c := buildreq.Context{Dir: filepath.Clean(ctxPath)}
	if t.DockerfileInline != nil && *t.DockerfileInline != "" {
		return c, buildreq.Dockerfile{Inline: []byte(*t.DockerfileInline)}, nil
	}
	df := "Dockerfile"
	if t.Dockerfile != nil && *t.Dockerfile != "" {
		df = *t.Dockerfile
	}
	switch {
	case df == "-":
		return buildreq.Context{}, buildreq.Dockerfile{}, fmt.Errorf("dockerfile \"-\": a Dockerfile from stdin is not allowed in bake: %w", errdefs.ErrInvalid)
	case strings.HasPrefix(df, "cwd://"):
		df = filepath.Clean(strings.TrimPrefix(df, "cwd://"))
	case !filepath.IsAbs(df):
		df = filepath.Join(c.Dir, df)
	}
	return c, buildreq.Dockerfile{Path: df}, nil
}

// gitContext is a target whose context is a git URL: the builder fetches
// it (buildreq.Context.Git), and the dockerfile is a path in the
// repository relative to the context's subdir, as with `kiln build URL`,
// or dockerfile-inline.
func gitContext(t *bx.Target, url string) (buildreq.Context, buildreq.Dockerfile, error) {
	if _, err := buildreq.ParseGitURL(url); err != nil {
		return buildreq.Context{}, buildreq.Dockerfile{}, fmt.Errorf("context: %w: %w", err, errdefs.ErrInvalid)
	}
	c := buildreq.Context{Git: url}
	if t.DockerfileInline != nil && *t.DockerfileInline != "" {
		return c, buildreq.Dockerfile{Inline: []byte(*t.DockerfileInline)}, nil
	}
	df := "Dockerfile"
	if t.Dockerfile != nil && *t.Dockerfile != "" {
		df = *t.Dockerfile
	}
	if df == "-" || strings.HasPrefix(df, "cwd://") || filepath.IsAbs(df) {
		return buildreq.Context{}, buildreq.Dockerfile{}, fmt.Errorf("dockerfile %q: with a git context the dockerfile is a path in the repository, relative to the context (or use dockerfile-inline): %w", df, errdefs.ErrInvalid)
	}
	return c, buildreq.Dockerfile{Path: df}, nil
}

// outputs are the target's outputs, the way buildx reads them, each with
// the target's annotations.
func outputs(t *bx.Target) ([]buildreq.Output, error) {
	annotations, err := buildflags.ParseAnnotations(t.Annotations)
	if err != nil {
		return nil, fmt.Errorf("annotations: %v: %w", err, errdefs.ErrInvalid)
	}
	var out []buildreq.Output
	for _, e := range t.Outputs {
		if e == nil {
			continue
		}
		attrs := maps.Clone(e.Attrs)
		if attrs == nil {
			attrs = map[string]string{}
		}
		for k, v := range annotations {
			attrs[k.String()] = v
		}
		o, err := buildreq.NewOutput(e.Type, e.Destination, attrs)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w: %w", e.String(), err, errdefs.ErrInvalid)
		}
		if o != nil {
			out = append(out, *o)
		}
	}
	return out, nil
}

func caches(entries []*buildflags.CacheOptionsEntry) []buildreq.Cache {
	var out []buildreq.Cache
	for _, e := range entries {
		if e != nil {
			out = append(out, buildreq.Cache{Type: e.Type, Attrs: maps.Clone(e.Attrs)})
		}
	}
	return out
}

// namedContexts sets b's named contexts (relative to the working
// directory) and its links to other targets (`target:` contexts).
func namedContexts(t *bx.Target, b *Build) error {
	for _, raw := range sortedKeys(t.Contexts) {
		v := t.Contexts[raw]
		if dep, ok := strings.CutPrefix(v, "target:"); ok {
			if b.Links == nil {
				b.Links = map[string]string{}
			}
			b.Links[raw] = dep
			continue
		}
		name, err := buildreq.ContextName(raw)
		if err != nil {
			return fmt.Errorf("context %q: invalid name: %v: %w", raw, err, errdefs.ErrInvalid)
		}
		c, err := buildreq.NamedContextOf(strings.TrimPrefix(v, "cwd://"))
		if err != nil {
			return fmt.Errorf("context %q: %v: %w", raw, err, errdefs.ErrInvalid)
		}
		if _, dup := b.Request.NamedContexts[name]; dup {
			return fmt.Errorf("context %q: context %q given more than once: %w", raw, name, errdefs.ErrInvalid)
		}
		if b.Request.NamedContexts == nil {
			b.Request.NamedContexts = map[string]buildreq.NamedContext{}
		}
		b.Request.NamedContexts[name] = c
	}
	return nil
}

// unsupported lists the target attributes kiln accepts but does not
// apply: said rather than building something else silently.
func unsupported(t *bx.Target) []string {
	var w []string
	if t.Pull != nil && *t.Pull {
		w = append(w, "pull: not supported by kiln; base images are resolved as usual")
	}
	if t.ShmSize != nil {
		w = append(w, "shm-size: not supported by kiln; ignored")
	}
	if len(t.Ulimits) > 0 {
		w = append(w, "ulimits: not supported by kiln; ignored")
	}
	if len(t.ExtraHosts) > 0 {
		w = append(w, "extra-hosts: not supported by kiln; ignored")
	}
	return w
}

// keyValues turns an args or labels map into a plain one; unset (null)
// values are left out, as buildx does.
func keyValues(m map[string]*string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if v == nil {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = *v
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
