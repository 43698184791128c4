package buildreq

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/moby/buildkit/session/sshforward/sshprovider"
	"golang.org/x/term"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// Flags are `kiln build`'s build flags as the user typed them, in buildx's
// syntax. [ParseFlags] turns them into a [Request].
type Flags struct {
	// ContextPath is a directory, or "-" for a tar archive (optionally gzip
	// or bzip2 compressed) on Stdin. When Stdin holds a plain Dockerfile
	// instead of an archive, it is used as the Dockerfile with an empty
	// context, like `docker build - < Dockerfile`.
	ContextPath string
	// Dockerfile is -f; "" means <context>/Dockerfile, "-" reads it from
	// Stdin. A relative path is relative to the working directory, except
	// with a stdin tar context, where it names a file inside the archive.
	Dockerfile string
	// Stdin is what "-" means for ContextPath and Dockerfile.
	Stdin io.Reader
	// Stdout is what dest=- means in an -o value (-o type=tar,dest=-): it
	// must be given, and not be a terminal, for such an output.
	Stdout io.Writer
	// Tags are -t values, validated as image references.
	Tags []string
	// Target is --target, the stage to build.
	Target string
	// BuildArgs are --build-arg values: "K=V", or "K" to take K from the
	// environment (skipped when unset, like buildx).
	BuildArgs []string
	// Labels are --label values: "K=V" ("K" alone means an empty value).
	Labels []string
	// Secrets are --secret values in buildx syntax: "id=x,src=path",
	// "id=x,env=VAR", "id=x" (env var x if set, else file x), optionally
	// with "type=file" or "type=env".
	Secrets []string
	// SSH are --ssh values: "default", "id=path[,path...]" or "id" (the
	// agent at $SSH_AUTH_SOCK).
	SSH []string
	// NoCache is --no-cache.
	NoCache bool
	// NoCacheFilter are --no-cache-filter stage names.
	NoCacheFilter []string
	// BuildContexts are --build-context values: "name=path" (a local
	// directory), "name=docker-image://ref", "name=oci-layout://path[:tag|@digest]",
	// or a git/http(s) URL.
	BuildContexts []string
	// Network is --network: "", "default" or "none".
	Network string
	// Platform is --platform: one platform, or a comma-separated list for
	// a multi-platform build ("linux/amd64,linux/arm64").
	Platform string
	// BuildPlatform is --build-platform: "" or "dynamic" (each platform on
	// the builder of its architecture), "linux/amd64" or "linux/arm64"
	// (every platform on that builder, foreign ones under emulation).
	BuildPlatform string
	// Outputs are -o values in buildx syntax: "type=local,dest=dir",
	// "type=tar,dest=f", "type=oci,dest=f", "type=docker[,dest=f]" (no
	// dest: load into the Docker engine), "type=image,name=ref[,push=true]",
	// "type=registry[,name=ref]" (push), "type=cacheonly"; dest "-" (the
	// default for tar and oci) is Stdout. A bare path means
	// type=local,dest=path and a bare "-" means type=tar,dest=-. Several
	// outputs may be given.
	Outputs []string
	// Push is --push: push=true on every image output, or a type=image
	// output pushing to the -t names when there is none.
	Push bool
	// Load is --load: a type=docker output loaded into the Docker engine
	// (DOCKER_HOST, or the current Docker context).
	Load bool
	// Provenance is --provenance: "" (buildx's default: min provenance,
	// attached to image outputs), "true", "false", "min", "max" or
	// attributes such as "mode=max,builder-id=x".
	Provenance string
	// SBOM is --sbom: "", "true", "false" or attributes such as
	// "generator=image".
	SBOM string
	// Attests are --attest values: "type=provenance|sbom[,disabled=true][,k=v...]".
	Attests []string
	// CacheFrom and CacheTo are --cache-from and --cache-to values:
	// "type=registry,ref=R[,mode=min|max]", a bare reference, or
	// "type=inline" (--cache-to); gha, local, s3 and azblob are accepted
	// (and dropped by the engine with a warning).
	CacheFrom, CacheTo []string
	// Call is --call: "" or "build" (build), "check", "outline" or
	// "targets", optionally with ",format=json" and ",ignorestatus=true".
	Call string
	// Lint is --lint: run the Dockerfile frontend's checks before the
	// build; LintFailOn ("error", the default, "warn" or "none") says
	// which violations stop the build.
	Lint       bool
	LintFailOn string
}

// maxStdinDockerfile limits a Dockerfile read from stdin (-f -).
const maxStdinDockerfile = 16 << 20

// ParseFlags parses and checks every flag, the way buildx reads them,
// before anything is read from stdin or sent anywhere. Errors wrap
// errdefs.ErrInvalid and name the flag and the value. Files are checked
// for existence (secrets, ssh keys, named context directories) but the
// build context and Dockerfile are left to the engine, which reads them.
func ParseFlags(f Flags) (Request, error) {
	var r Request
	steps := []func(*Request, Flags) error{
		parseTags, parseBuildArgs, parseLabels, parseNoCache, parseNetwork, parsePlatforms,
		parseOutputs, parseAttests, parseCaches, parseCallAndLint, parseTarget,
		parseSecrets, parseSSH, parseBuildContexts,
		parseContext, // last: it may read stdin
	}
	for _, step := range steps {
		if err := step(&r, f); err != nil {
			return Request{}, err
		}
	}
	return r, nil
}

// parseCSV splits a comma-separated flag value the way buildx does (CSV,
// so a field may be quoted to contain a comma).
func parseCSV(v string) ([]string, error) {
	cr := csv.NewReader(strings.NewReader(v))
	cr.LazyQuotes = false
	return cr.Read()
}

func parseContext(r *Request, f Flags) error {
	switch {
	case f.ContextPath == "":
		return errdefs.Invalidf("build context: a path (or \"-\" for a tar archive on stdin) is required")
	case f.ContextPath == "-" && f.Dockerfile == "-":
		return errdefs.Invalidf("-f \"-\": stdin is already used for the build context; it cannot also be the Dockerfile")
	case IsGitURL(f.ContextPath):
		if _, err := ParseGitURL(f.ContextPath); err != nil {
			return errdefs.InvalidWrapf(err, "build context")
		}
		r.Context.Git = f.ContextPath
		if f.Dockerfile == "-" {
			break // inline, read below
		}
		if filepath.IsAbs(f.Dockerfile) {
			return errdefs.Invalidf("-f %q: with a git context, -f names a file in the repository (relative to the context directory), or \"-\" for stdin", f.Dockerfile)
		}
		r.Dockerfile.Path = f.Dockerfile
		return nil
	case f.ContextPath == "-":
		if f.Stdin == nil {
			return errdefs.Invalidf("build context \"-\": no stdin to read the archive from")
		}
		r.Context.Tar = f.Stdin
		r.Dockerfile.Path = f.Dockerfile
		return nil
	}
	if r.Context.Git == "" {
		r.Context.Dir = f.ContextPath
	}
	if f.Dockerfile != "-" {
		r.Dockerfile.Path = f.Dockerfile
		return nil
	}
	if f.Stdin == nil {
		return errdefs.Invalidf("-f \"-\": no stdin to read the Dockerfile from")
	}
	dt, err := io.ReadAll(io.LimitReader(f.Stdin, maxStdinDockerfile+1))
	if err != nil {
		return fmt.Errorf("-f \"-\": reading stdin: %w", err)
	}
	if len(dt) > maxStdinDockerfile {
		return errdefs.Invalidf("-f \"-\": Dockerfile on stdin is larger than %d MiB", maxStdinDockerfile>>20)
	}
	if len(dt) == 0 {
		return errdefs.Invalidf("-f \"-\": stdin is empty")
	}
	r.Dockerfile.Inline = dt
	return nil
}

func parseTags(r *Request, f Flags) error {
	for _, t := range f.Tags {
		if err := checkTag(t); err != nil {
			if t == "" {
				return errdefs.Invalidf("-t %q: %v", t, err)
			}
			return errdefs.InvalidWrapf(err, "-t %q", t)
		}
		r.Tags = append(r.Tags, t)
	}
	return nil
}

func parseBuildArgs(r *Request, f Flags) error {
	for _, a := range f.BuildArgs {
		k, v, ok := strings.Cut(a, "=")
		if !checkName(k) {
			return errdefs.Invalidf("--build-arg %q: missing or malformed name (want NAME=VALUE or NAME)", a)
		}
		if !ok {
			env, set := os.LookupEnv(k)
			if !set {
				continue // like buildx: an unset variable is skipped
			}
			v = env
		}
		if r.Args == nil {
			r.Args = map[string]string{}
		}
		r.Args[k] = v
	}
	return nil
}

func parseLabels(r *Request, f Flags) error {
	for _, l := range f.Labels {
		k, v, _ := strings.Cut(l, "=")
		if !checkName(k) {
			return errdefs.Invalidf("--label %q: missing or malformed name (want KEY=VALUE)", l)
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[k] = v
	}
	return nil
}

func parseNoCache(r *Request, f Flags) error {
	for _, s := range f.NoCacheFilter {
		if !checkStage(s) {
			return errdefs.Invalidf("--no-cache-filter %q: not a valid stage name", s)
		}
	}
	r.NoCache = f.NoCache
	r.NoCacheFilter = slices.Clone(f.NoCacheFilter)
	return nil
}

func parseNetwork(r *Request, f Flags) error {
	switch f.Network {
	case "", "default":
	case "none":
		r.Network = "none"
	case "host":
		return errdefs.Invalidf("--network %q: host networking is not supported (supported: default, none)", f.Network)
	default:
		return errdefs.Invalidf("--network %q: unknown network mode (supported: default, none)", f.Network)
	}
	return nil
}

// BuildPlatformDynamic is --build-platform's default: each target platform
// is built on the builder of its own architecture.
const BuildPlatformDynamic = "dynamic"

// parsePlatforms parses --platform (one platform or a comma-separated list,
// as buildx takes it: normalized, duplicates dropped, order kept) and
// --build-platform.
func parsePlatforms(r *Request, f Flags) error {
	if v := f.Platform; strings.TrimSpace(v) != "" {
		for _, item := range strings.Split(v, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				return errdefs.Invalidf("--platform %q: empty platform in the list (want os/arch[/variant][,os/arch...], e.g. linux/amd64,linux/arm64)", v)
			}
			p, err := platform.Parse(item)
			if err != nil {
				return errdefs.Invalidf("--platform %q: %q is not a valid platform (want os/arch[/variant], e.g. linux/arm64)", v, item)
			}
			if _, ok := p.Builder(); !ok {
				return errdefs.Invalidf("--platform %q: no kiln builder or emulator runs %s (supported: %s)", v, p, platform.Supported)
			}
			if !slices.Contains(r.Platforms, p) {
				r.Platforms = append(r.Platforms, p)
			}
		}
	}
	switch b := strings.TrimSpace(f.BuildPlatform); b {
	case "", BuildPlatformDynamic:
	default:
		p, err := platform.Parse(b)
		if err != nil || (p != platform.AMD64 && p != platform.ARM64) {
			return errdefs.Invalidf("--build-platform %q: want %s, %s or %s", f.BuildPlatform, BuildPlatformDynamic, platform.AMD64, platform.ARM64)
		}
		r.BuildPlatform = p
	}
	return nil
}

// parseOutputs parses -o values and the --push and --load shorthands the
// way buildx does: --push sets push=true on every image output (adding
// type=image when there is none), --load adds type=docker unless an output
// already loads. The -t tags name every image output without a name= of
// its own.
func parseOutputs(r *Request, f Flags) error {
	var outs []Output
	var labels []string
	for _, v := range f.Outputs {
		o, err := parseOutput(v)
		if err != nil {
			return err
		}
		if o != nil {
			outs = append(outs, *o)
			labels = append(labels, "-o "+strconv.Quote(v))
		}
	}
	if f.Push {
		pushed := false
		for _, o := range outs {
			if o.Type == OutputImage {
				o.Attrs["push"] = "true"
				pushed = true
			}
		}
		if !pushed {
			outs = append(outs, Output{Type: OutputImage, Attrs: map[string]string{"push": "true"}})
			labels = append(labels, "--push")
		}
	}
	if f.Load && !slices.ContainsFunc(outs, Output.IsLoad) {
		outs = append(outs, Output{Type: OutputDocker, Attrs: map[string]string{}})
		labels = append(labels, "--load")
	}
	for i, o := range outs {
		if err := checkOutputAttrs(o); err != nil {
			return labelled(err, labels[i])
		}
		if o.Dest == "-" {
			if f.Stdout == nil {
				return errdefs.Invalidf("%s: dest=- needs a stdout to write to", labels[i])
			}
			if isTerminal(f.Stdout) {
				return errdefs.Invalidf("%s: refusing to write an archive to a terminal; redirect stdout or give dest=<file>", labels[i])
			}
		}
	}
	if err := checkOutputSet(outs, labels, len(f.Tags) > 0); err != nil {
		return err
	}
	r.Outputs = outs
	return nil
}

// parseOutput parses one -o value. It returns nil for type=cacheonly,
// buildx's way of asking for no output at all.
func parseOutput(v string) (*Output, error) {
	o := &Output{Attrs: map[string]string{}}
	switch {
	case v == "":
		return nil, errdefs.Invalidf("-o %q: empty output", v)
	case v == "-":
		o.Type, o.Dest = OutputTar, "-"
		return o, nil
	case !strings.Contains(v, "="):
		o.Type, o.Dest = OutputLocal, v
		return o, nil
	}
	fields, err := parseCSV(v)
	if err != nil {
		return nil, errdefs.InvalidWrapf(err, "-o %q", v)
	}
	hasDest := false
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		k = strings.TrimSpace(strings.ToLower(k))
		if !ok || k == "" {
			return nil, errdefs.Invalidf("-o %q: field %q is not key=value", v, f)
		}
		switch k {
		case "type":
			o.Type = val
		case "dest":
			o.Dest, hasDest = val, true
		default:
			if _, dup := o.Attrs[k]; dup {
				return nil, errdefs.Invalidf("-o %q: %s= given more than once", v, k)
			}
			o.Attrs[k] = val
		}
	}
	if hasDest && o.Dest == "" {
		return nil, errdefs.Invalidf("-o %q: empty dest= (a path, or \"-\" for stdout)", v)
	}
	out, err := NewOutput(o.Type, o.Dest, o.Attrs)
	if err != nil {
		return nil, labelled(err, "-o "+strconv.Quote(v))
	}
	return out, nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// parseAttests turns --attest, --provenance and --sbom into Attests the
// way buildx does: --provenance=V and --sbom=V are
// --attest=type=provenance,V and --attest=type=sbom,V; true and false
// enable or disable. kiln also takes min and max for --provenance (short
// for mode=min and mode=max).
func parseAttests(r *Request, f Flags) error {
	values := slices.Clone(f.Attests)
	flags := make([]string, len(f.Attests))
	for i, a := range f.Attests {
		flags[i] = "--attest " + strconv.Quote(a)
	}
	if f.Provenance != "" {
		values = append(values, shorthandAttest(AttestProvenance, f.Provenance))
		flags = append(flags, "--provenance "+strconv.Quote(f.Provenance))
	}
	if f.SBOM != "" {
		values = append(values, shorthandAttest(AttestSBOM, f.SBOM))
		flags = append(flags, "--sbom "+strconv.Quote(f.SBOM))
	}
	seen := map[string]bool{}
	for i, v := range values {
		a, err := parseAttest(flags[i], v)
		if err != nil {
			return err
		}
		if seen[a.Type] {
			return errdefs.Invalidf("%s: attestation type %q given more than once", flags[i], a.Type)
		}
		seen[a.Type] = true
		r.Attests = append(r.Attests, a)
	}
	return nil
}

// shorthandAttest canonicalizes a --provenance or --sbom value.
func shorthandAttest(typ, v string) string {
	if b, err := strconv.ParseBool(v); err == nil {
		return "type=" + typ + ",disabled=" + strconv.FormatBool(!b)
	}
	if typ == AttestProvenance && (v == "min" || v == "max") {
		return "type=" + typ + ",mode=" + v
	}
	return "type=" + typ + "," + v
}

// parseAttest parses one attestation: type=T[,disabled=B][,key=value...].
func parseAttest(flag, v string) (Attest, error) {
	fields, err := parseCSV(v)
	if err != nil {
		return Attest{}, errdefs.InvalidWrapf(err, "%s", flag)
	}
	a := Attest{Attrs: map[string]string{}}
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		k = strings.TrimSpace(strings.ToLower(k))
		if !ok || k == "" {
			return Attest{}, errdefs.Invalidf("%s: field %q is not key=value", flag, f)
		}
		switch k {
		case "type":
			a.Type = val
		case "disabled":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return Attest{}, errdefs.Invalidf("%s: disabled=%q is not a boolean", flag, val)
			}
			a.Disabled = b
		default:
			if _, dup := a.Attrs[k]; dup {
				return Attest{}, errdefs.Invalidf("%s: %s= given more than once", flag, k)
			}
			a.Attrs[k] = val
		}
	}
	if err := checkAttest(a); err != nil {
		return Attest{}, labelled(err, flag)
	}
	if a.Disabled {
		a.Attrs = nil
	}
	return a, nil
}

// labelled turns a check's plain error into an invalid one prefixed with
// label ("--attest \"type=vex\": unknown attestation type ...").
func labelled(err error, label string) error {
	return errdefs.InvalidWrapf(err, "%s", label)
}

// parseCaches parses --cache-from and --cache-to like buildx: a value
// without "=" is a comma-separated list of registry references
// (type=registry,ref=REF each); otherwise type=T,key=value...
func parseCaches(r *Request, f Flags) error {
	var err error
	if r.CacheFrom, err = parseCacheFlag("--cache-from", f.CacheFrom); err != nil {
		return err
	}
	r.CacheTo, err = parseCacheFlag("--cache-to", f.CacheTo)
	return err
}

func parseCacheFlag(flag string, values []string) ([]Cache, error) {
	var out []Cache
	for _, v := range values {
		if v == "" {
			continue
		}
		label := flag + " " + strconv.Quote(v)
		fields, err := parseCSV(v)
		if err != nil {
			return nil, errdefs.InvalidWrapf(err, "%s", label)
		}
		var entries []Cache
		if !strings.Contains(v, "=") {
			for _, ref := range fields {
				entries = append(entries, Cache{Type: CacheRegistry, Attrs: map[string]string{"ref": strings.TrimSpace(ref)}})
			}
		} else {
			c := Cache{Attrs: map[string]string{}}
			seen := map[string]bool{}
			for _, f := range fields {
				k, val, ok := strings.Cut(f, "=")
				k = strings.TrimSpace(strings.ToLower(k))
				if !ok || k == "" {
					return nil, errdefs.Invalidf("%s: field %q is not key=value", label, f)
				}
				if seen[k] {
					return nil, errdefs.Invalidf("%s: %s= given more than once", label, k)
				}
				seen[k] = true
				if k == "type" {
					c.Type = val
				} else {
					c.Attrs[k] = val
				}
			}
			entries = append(entries, c)
		}
		for _, c := range entries {
			if err := checkCache(c, flag == "--cache-to"); err != nil {
				return nil, labelled(err, label)
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// parseCallAndLint parses --call (buildx's NAME[,format=json|text][,ignorestatus=BOOL],
// where NAME is build, check, outline or targets), --lint and --lint-fail-on.
func parseCallAndLint(r *Request, f Flags) error {
	c, err := parseCall(f.Call)
	if err != nil {
		return err
	}
	r.Call = c
	if !checkLintFailOn(f.LintFailOn) {
		return errdefs.Invalidf("--lint-fail-on %q: unknown level (supported: error, warn, none)", f.LintFailOn)
	}
	if !f.Lint {
		return nil
	}
	if c.Method != "" {
		return errdefs.Invalidf("--lint and --call=%s: give one (--call=check prints the same checks without building)", f.Call)
	}
	failOn := f.LintFailOn
	if failOn == "" {
		failOn = LintFailOnError
	}
	r.Lint = &Lint{FailOn: failOn}
	return nil
}

func parseCall(v string) (Call, error) {
	if v == "" {
		return Call{}, nil
	}
	label := "--call " + strconv.Quote(v)
	fields, err := parseCSV(v)
	if err != nil {
		return Call{}, errdefs.InvalidWrapf(err, "%s", label)
	}
	var c Call
	named := false
	for _, field := range fields {
		k, val, ok := strings.Cut(field, "=")
		if !ok {
			if named {
				return Call{}, errdefs.Invalidf("%s: more than one method", label)
			}
			c.Method, named = strings.TrimSpace(field), true
			continue
		}
		switch k {
		case "format":
			if val != "json" && val != "text" {
				return Call{}, errdefs.Invalidf("%s: unknown format %q (supported: text, json)", label, val)
			}
			if val == "json" {
				c.Format = "json"
			}
		case "ignorestatus":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return Call{}, errdefs.Invalidf("%s: ignorestatus=%q is not a boolean", label, val)
			}
			c.IgnoreStatus = b
		default:
			return Call{}, errdefs.Invalidf("%s: unknown field %q (supported: format, ignorestatus)", label, k)
		}
	}
	switch c.Method {
	case "build":
		c.Method = ""
	case "lint":
		c.Method = "check" // buildx's alias, kept for compatibility
	case "":
		return Call{}, errdefs.Invalidf("%s: missing method (build, check, outline, targets)", label)
	}
	if err := checkCall(c); err != nil {
		return Call{}, labelled(err, label)
	}
	return c, nil
}

func parseTarget(r *Request, f Flags) error {
	if !checkTarget(f.Target) {
		return errdefs.Invalidf("--target %q: not a valid stage name", f.Target)
	}
	r.Target = f.Target
	return nil
}

func parseSecrets(r *Request, f Flags) error {
	seen := map[string]bool{}
	for _, v := range f.Secrets {
		s, err := parseSecret(v)
		if err != nil {
			return err
		}
		if seen[s.ID] {
			return errdefs.Invalidf("--secret %q: duplicate secret id %q", v, s.ID)
		}
		seen[s.ID] = true
		r.Secrets = append(r.Secrets, s)
	}
	return nil
}

func parseSecret(v string) (Secret, error) {
	if !strings.Contains(v, "=") {
		return Secret{}, errdefs.Invalidf("--secret %q: missing id=", v)
	}
	fields, err := parseCSV(v)
	if err != nil {
		return Secret{}, errdefs.InvalidWrapf(err, "--secret %q", v)
	}
	var s Secret
	typ := ""
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			return Secret{}, errdefs.Invalidf("--secret %q: field %q is not key=value", v, f)
		}
		switch strings.ToLower(k) {
		case "type":
			if val != "file" && val != "env" {
				return Secret{}, errdefs.Invalidf("--secret %q: unsupported type %q (supported: file, env)", v, val)
			}
			typ = val
		case "id":
			s.ID = val
		case "src", "source":
			s.Src = val
		case "env":
			s.Env = val
		default:
			return Secret{}, errdefs.Invalidf("--secret %q: unknown key %q (supported: id, src, env, type)", v, k)
		}
	}
	if s.ID == "" {
		return Secret{}, errdefs.Invalidf("--secret %q: missing id=", v)
	}
	if typ == "env" && s.Env == "" {
		// type=env,id=x,src=VAR names the variable through src.
		s.Env, s.Src = s.Src, ""
	}
	if typ == "file" && s.Env != "" {
		return Secret{}, errdefs.Invalidf("--secret %q: type=file cannot take env=", v)
	}
	if s.Env != "" && s.Src != "" {
		return Secret{}, errdefs.Invalidf("--secret %q: give either src= or env=, not both", v)
	}
	if typ == "file" && s.Src == "" {
		s.Src = s.ID
	}
	if typ == "env" && s.Env == "" {
		s.Env = s.ID
	}
	if s.Src != "" {
		if err := checkReadable(s.Src); err != nil {
			return Secret{}, errdefs.InvalidWrapf(err, "--secret %q", v)
		}
	}
	// NewStore resolves "id=x" alone (env x when set, else file x) and
	// checks that files exist and are not too big.
	src := secretsprovider.Source{ID: s.ID, FilePath: s.Src, Env: s.Env}
	if _, err := secretsprovider.NewStore([]secretsprovider.Source{src}); err != nil {
		return Secret{}, errdefs.InvalidWrapf(err, "--secret %q", v)
	}
	s = s.Resolved()
	if s.Src != "" {
		if abs, err := filepath.Abs(s.Src); err == nil {
			s.Src = abs
		}
	}
	return s, nil
}

func parseSSH(r *Request, f Flags) error {
	var cfgs []sshprovider.AgentConfig
	for _, v := range f.SSH {
		id, paths, hasPaths := strings.Cut(v, "=")
		if id == "" {
			return errdefs.Invalidf("--ssh %q: missing id (want default, ID or ID=PATH[,PATH])", v)
		}
		s := SSH{ID: id}
		if hasPaths {
			for _, p := range strings.Split(paths, ",") {
				if p == "" {
					return errdefs.Invalidf("--ssh %q: empty path", v)
				}
				s.Paths = append(s.Paths, p)
			}
		}
		if len(s.Paths) == 0 && os.Getenv("SSH_AUTH_SOCK") == "" {
			return errdefs.Invalidf("--ssh %q: no agent socket: SSH_AUTH_SOCK is not set (or give %s=PATH)", v, id)
		}
		for _, p := range s.Paths {
			if err := checkReadable(p); err != nil {
				return errdefs.InvalidWrapf(err, "--ssh %q", v)
			}
		}
		r.SSH = append(r.SSH, s)
		// Validate now: sockets and keys must exist, keys must parse, ids
		// must be unique.
		cfgs = append(cfgs, sshprovider.AgentConfig{ID: s.ID, Paths: slices.Clone(s.Paths)})
		if _, err := sshprovider.NewSSHAgentProvider(slices.Clone(cfgs)); err != nil {
			return errdefs.InvalidWrapf(err, "--ssh %q", v)
		}
	}
	return nil
}

func parseBuildContexts(r *Request, f Flags) error {
	for _, v := range f.BuildContexts {
		rawName, val, ok := strings.Cut(v, "=")
		if !ok || rawName == "" || val == "" {
			return errdefs.Invalidf("--build-context %q: want NAME=VALUE", v)
		}
		name, err := ContextName(rawName)
		if err != nil {
			return errdefs.InvalidWrapf(err, "--build-context %q: invalid name %q", v, rawName)
		}
		if _, dup := r.NamedContexts[name]; dup {
			return errdefs.Invalidf("--build-context %q: context %q given more than once", v, name)
		}
		c, err := NamedContextOf(val)
		if err != nil {
			return labelled(err, "--build-context "+strconv.Quote(v))
		}
		if r.NamedContexts == nil {
			r.NamedContexts = map[string]NamedContext{}
		}
		r.NamedContexts[name] = c
	}
	return nil
}

// checkReadable reports, in a short form, why p cannot be read.
func checkReadable(p string) error {
	_, err := os.Stat(p)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", p, pe.Err)
	}
	return err
}
