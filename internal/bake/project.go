package bake

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	bx "github.com/docker/buildx/bake"
	"github.com/docker/buildx/bake/hclparser"
	"github.com/hashicorp/hcl/v2"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// projectAttr is the target attribute (HCL, JSON and --set) naming a
// target's project, as in depot bake.
const projectAttr = "project_id"

// Compose build extensions that name a service's project: depot's, and
// kiln's own (which wins when a service has both).
var composeProjectExts = []string{"x-depot", "x-kiln"}

const composeProjectKey = "project-id"

// projectIDRe bounds what a project id may look like before it is sent to
// the server (kiln's ids are 12 lowercase letters and digits; depot's are
// similar).
var projectIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func checkProjectID(v string) error {
	if !projectIDRe.MatchString(v) {
		return fmt.Errorf("project id %q: want 1-128 letters, digits, '.', '_' or '-': %w", v, errdefs.ErrInvalid)
	}
	return nil
}

// targetNameRe is buildx's rule for target names (validated again here
// because this package parses the HCL a second time).
var targetNameRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// projectMeta is what buildx's parser drops: each target's own project id
// and, for HCL and JSON targets, what it inherits from.
type projectMeta struct {
	explicit map[string]string   // target → its own project id
	inherits map[string][]string // target → parents, in order
	all      map[string]bool     // every target defined in the files
}

type projectOverride struct{ pattern, value string }

// readProjectMeta reads project ids and inherits from the files buildx has
// already parsed successfully: Compose files with compose-go, HCL and JSON
// with buildx's own HCL evaluator (so variables, functions and matrix work
// in project_id exactly as in any other attribute) but a schema that has
// only the attributes kiln needs.
func readProjectMeta(files []bx.File, defaults map[string]string) (*projectMeta, error) {
	m := &projectMeta{explicit: map[string]string{}, inherits: map[string][]string{}, all: map[string]bool{}}
	var compose []bx.File
	var hclFiles []*hcl.File
	for _, f := range files {
		if isComposeFile(f) {
			compose = append(compose, f)
			continue
		}
		hf, _, err := bx.ParseHCLFile(f.Data, f.Name)
		if err != nil {
			return nil, invalid(err)
		}
		hclFiles = append(hclFiles, hf)
	}
	if len(compose) > 0 {
		if err := m.readCompose(compose); err != nil {
			return nil, err
		}
	}
	if len(hclFiles) > 0 {
		var c hclConfig
		_, diags := hclparser.Parse(hclparser.MergeFiles(hclFiles), hclparser.Opt{
			LookupVar: os.LookupEnv,
			Vars:      defaults,
			ValidateLabel: func(name string) error {
				if !targetNameRe.MatchString(name) {
					return fmt.Errorf("only %q are allowed", targetNameRe.String())
				}
				return nil
			},
		}, &c)
		if diags.HasErrors() {
			return nil, invalid(diags)
		}
		for _, t := range c.Targets {
			m.all[t.Name] = true
			if len(t.Inherits) > 0 {
				m.inherits[t.Name] = t.Inherits
			}
			if t.ProjectID == nil || *t.ProjectID == "" {
				continue
			}
			if err := checkProjectID(*t.ProjectID); err != nil {
				return nil, fmt.Errorf("target %q: %s: %w", t.Name, projectAttr, err)
			}
			m.explicit[t.Name] = *t.ProjectID
		}
	}
	return m, nil
}

// isComposeFile classifies a file the way buildx does: .yml and .yaml are
// Compose, .json and .hcl are not, anything else is Compose if it loads as
// such.
func isComposeFile(f bx.File) bool {
	n := strings.ToLower(f.Name)
	switch {
	case strings.HasSuffix(n, ".yml"), strings.HasSuffix(n, ".yaml"):
		return true
	case strings.HasSuffix(n, ".json"), strings.HasSuffix(n, ".hcl"):
		return false
	}
	_, err := loadComposeModel([]bx.File{f})
	return err == nil
}

// readCompose reads services.<svc>.build.x-depot.project-id (and x-kiln)
// of every service with a build section; the target is the service name
// with dots made underscores, as buildx names it.
func (m *projectMeta) readCompose(files []bx.File) error {
	raw, err := loadComposeModel(files)
	if err != nil {
		return invalid(fmt.Errorf("compose: %w", err))
	}
	services, _ := raw["services"].(map[string]any)
	for svc, v := range services {
		s, _ := v.(map[string]any)
		build, ok := s["build"]
		if !ok || build == nil {
			continue
		}
		target := strings.ReplaceAll(svc, ".", "_")
		m.all[target] = true
		b, _ := build.(map[string]any) // a string is only a context path
		for _, ext := range composeProjectExts {
			x, ok := b[ext]
			if !ok || x == nil {
				continue
			}
			xm, ok := x.(map[string]any)
			if !ok {
				return fmt.Errorf("compose service %q: build.%s must be a mapping: %w", svc, ext, errdefs.ErrInvalid)
			}
			raw, ok := xm[composeProjectKey]
			if !ok || raw == nil {
				continue
			}
			var id string
			switch p := raw.(type) {
			case string:
				id = p
			case int:
				id = strconv.Itoa(p)
			case int64:
				id = strconv.FormatInt(p, 10)
			case uint64:
				id = strconv.FormatUint(p, 10)
			default:
				return fmt.Errorf("compose service %q: build.%s.%s must be a string, not %T: %w", svc, ext, composeProjectKey, raw, errdefs.ErrInvalid)
			}
			if id == "" {
				continue
			}
			if err := checkProjectID(id); err != nil {
				return fmt.Errorf("compose service %q: build.%s.%s: %w", svc, ext, composeProjectKey, err)
			}
			m.explicit[target] = id
		}
	}
	return nil
}

// loadComposeModel loads Compose files into compose-go's raw model,
// interpolated with the environment and the working directory's .env (as
// buildx does), without normalization or schema validation (buildx has
// already validated what it uses).
func loadComposeModel(files []bx.File) (map[string]any, error) {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if wd, err := os.Getwd(); err == nil {
		dotEnv := filepath.Join(wd, ".env")
		if fi, err := os.Stat(dotEnv); err == nil && fi.Mode().IsRegular() {
			if env, err = dotenv.GetEnvFromFile(env, []string{dotEnv}); err != nil {
				return nil, err
			}
		}
	}
	var cfgs []composetypes.ConfigFile
	for _, f := range files {
		cfgs = append(cfgs, composetypes.ConfigFile{Filename: f.Name, Content: f.Data})
	}
	return loader.LoadModelWithContext(context.Background(), composetypes.ConfigDetails{ConfigFiles: cfgs, Environment: env},
		func(o *loader.Options) {
			o.SetProjectName("bake", false)
			o.SkipNormalization = true
			o.SkipValidation = true
			o.SkipConsistencyCheck = true
			o.SkipResolveEnvironment = true
		})
}

// checkInherits refuses a cycle in the inherits of name (buildx silently
// drops the repeated parent, so a typo would quietly change the build).
func (m *projectMeta) checkInherits(name string) error {
	var walk func(n string, path []string) error
	walk = func(n string, stack []string) error {
		for i, s := range stack {
			if s == n {
				return fmt.Errorf("target %q: cyclic inherits: %s: %w", stack[0], strings.Join(append(stack[i:], n), " → "), errdefs.ErrInvalid)
			}
		}
		stack = append(stack, n)
		for _, p := range m.inherits[n] {
			if err := walk(p, stack); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(name, nil)
}

// resolve returns the project of each target that has one: its own
// project_id, else the last project a parent in inherits resolves to,
// then --set T.project_id overrides (applied at every level, as buildx
// applies overrides to a parent before merging it into its child). A
// --set pattern that matches no target in the files is an error, as in
// buildx.
func (m *projectMeta) resolve(targets []string, overrides []projectOverride) (map[string]string, error) {
	for _, o := range overrides {
		found := false
		for name := range m.all {
			if ok, _ := path.Match(o.pattern, name); ok {
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("--set %s.%s: could not find any target matching %q: %w", o.pattern, projectAttr, o.pattern, errdefs.ErrInvalid)
		}
	}
	memo := map[string]string{}
	var project func(name string) string
	project = func(name string) string {
		if v, ok := memo[name]; ok {
			return v
		}
		memo[name] = "" // cycles were refused by checkInherits
		v := ""
		for _, p := range m.inherits[name] {
			if pv := project(p); pv != "" {
				v = pv
			}
		}
		if e, ok := m.explicit[name]; ok {
			v = e
		}
		for _, o := range overrides {
			if ok, _ := path.Match(o.pattern, name); ok {
				v = o.value
			}
		}
		memo[name] = v
		return v
	}
	out := map[string]string{}
	for _, t := range targets {
		if v := project(t); v != "" {
			out[t] = v
		}
	}
	return out, nil
}

// hclConfig is the part of a bake file kiln reads itself. hclparser fills
// it like buildx's own Config (blocks by the hcl tags; matrix and name
// through the bx.Target methods) and ignores the other attributes.
type hclConfig struct {
	Groups  []*bx.Group  `json:"group" hcl:"group,block" cty:"group"`
	Targets []*hclTarget `json:"target" hcl:"target,block" cty:"target"`
}

type hclTarget struct {
	Name      string   `json:"-" hcl:"name,label" cty:"name"`
	Inherits  []string `json:"inherits,omitempty" hcl:"inherits,optional" cty:"inherits"`
	ProjectID *string  `json:"project_id,omitempty" hcl:"project_id,optional" cty:"project_id"`
}

// GetEvalContexts and GetName expand a matrix target into its instances,
// exactly as buildx does (its methods do not depend on the receiver).
func (t *hclTarget) GetEvalContexts(ectx *hcl.EvalContext, block *hcl.Block, loadDeps func(hcl.Expression) hcl.Diagnostics) ([]*hcl.EvalContext, error) {
	return (&bx.Target{}).GetEvalContexts(ectx, block, loadDeps)
}

func (t *hclTarget) GetName(ectx *hcl.EvalContext, block *hcl.Block, loadDeps func(hcl.Expression) hcl.Diagnostics) (string, error) {
	return (&bx.Target{}).GetName(ectx, block, loadDeps)
}

// Merge folds a later definition of the same target (an override file) into
// t, as bx.Target.Merge does: a set project_id replaces, inherits append.
func (t *hclTarget) Merge(t2 *hclTarget) {
	if t2.ProjectID != nil {
		t.ProjectID = t2.ProjectID
	}
	t.Inherits = append(t.Inherits, t2.Inherits...)
}

var (
	_ hclparser.WithEvalContexts = (*hclTarget)(nil)
	_ hclparser.WithGetName      = (*hclTarget)(nil)
)
