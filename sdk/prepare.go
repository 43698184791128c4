package sdk

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/platform"
)

// prepare makes the engine's request for r, validating it (the context
// exists, the Dockerfile is there, secrets and keys are readable) before
// anything talks to a server. tmp is a private directory that lives until
// the build ends; secret values are written there, each in a file only
// this user can read. The caller closes the request.
//
// TODO(lead): engine.Prepare takes buildreq.Request once typedreq lands;
// this function then becomes that call (secret values passed in memory),
// and the flag strings below go away.
func prepare(r buildreq.Request, tmp string) (*engine.Request, error) {
	o := engine.Options{Target: r.Target, NoCache: r.NoCache, Progress: "quiet",
		Platform: strings.Join(platform.Strings(r.Platforms), ",")}
	switch {
	case r.Context.Tar != nil:
		o.ContextPath, o.Stdin = "-", r.Context.Tar
		o.Dockerfile = r.Dockerfile.Path
	default:
		o.ContextPath = r.Context.Dir
		if p := r.Dockerfile.Path; p != "" {
			if !filepath.IsAbs(p) {
				p = filepath.Join(r.Context.Dir, p)
			}
			o.Dockerfile = p
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Args)) {
		o.BuildArgs = append(o.BuildArgs, k+"="+r.Args[k])
	}
	for i, s := range r.Secrets {
		p := filepath.Join(tmp, fmt.Sprintf("secret-%d", i))
		if err := os.WriteFile(p, s.Value, 0o600); err != nil {
			return nil, fmt.Errorf("sdk: secret %q: %w", s.ID, err)
		}
		o.Secrets = append(o.Secrets, "id="+s.ID+",src="+p)
	}
	for _, s := range r.SSH {
		o.SSH = append(o.SSH, s.ID+"="+strings.Join(s.Paths, ","))
	}
	for _, out := range r.Outputs {
		o.Outputs = append(o.Outputs, "type="+out.Type+attrString(out.Attrs))
	}
	for _, c := range r.CacheFrom {
		o.CacheFrom = append(o.CacheFrom, "type="+c.Type+attrString(c.Attrs))
	}
	for _, c := range r.CacheTo {
		o.CacheTo = append(o.CacheTo, "type="+c.Type+attrString(c.Attrs))
	}
	return engine.Prepare(o)
}

// attrString is attrs as ",k=v" pairs, in key order.
func attrString(attrs map[string]string) string {
	s := ""
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		s += "," + k + "=" + attrs[k]
	}
	return s
}
