package engine

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/moby/buildkit/session/sshforward/sshprovider"
	"github.com/moby/buildkit/util/progress/progressui"

	"github.com/kiln-dev/kiln/internal/archive"
)

// Options are `kiln build` flags as the user typed them.
type Options struct {
	// ContextPath is a directory, or "-" for a tar archive (optionally gzip
	// or bzip2 compressed) on Stdin. When Stdin holds a plain Dockerfile
	// instead of an archive, it is used as the Dockerfile with an empty
	// context, like `docker build - < Dockerfile`.
	ContextPath string
	// Stdin is read when ContextPath or Dockerfile is "-".
	Stdin io.Reader
	// Stdout receives an output whose dest is "-" (-o type=tar,dest=-).
	// It is only required in that case.
	Stdout io.Writer
	// Dockerfile is -f; "" means <context>/Dockerfile, "-" reads it from
	// Stdin. A relative path is relative to the working directory, except
	// with a stdin tar context, where it names a file inside the archive.
	Dockerfile string
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
	// and ignored with a warning (see [Request.Warnings]).
	CacheFrom, CacheTo []string
	// Call is --call: "" or "build" (build), "check", "outline" or
	// "targets", optionally with ",format=json" and ",ignorestatus=true".
	Call string
	// Lint is --lint: run the Dockerfile frontend's checks before the
	// build and print violations; LintFailOn ("error", the default, "warn"
	// or "none") says which violations stop the build.
	Lint       bool
	LintFailOn string
	// Progress is --progress: "auto" (or ""), "plain", "tty", "quiet" or
	// "rawjson".
	Progress string
}

// Limits on an archive read from stdin.
const (
	maxStdinEntries    = 100_000
	maxStdinBytes      = 2 << 30 // 2 GiB of file content
	maxStdinDockerfile = 16 << 20
)

// Mount names the dockerfile frontend reads its inputs from.
const (
	mountContext    = "context"
	mountDockerfile = "dockerfile"
)

// Request is a validated build, ready to [Solve]. It is made by [Prepare]
// and must be closed with [Request.Close].
type Request struct {
	contextDir     string // absolute
	dockerfilePath string // absolute
	frontendAttrs  map[string]string
	locals         map[string]string // mount name → absolute directory
	ociStores      map[string]string // store id → oci layout directory
	secrets        []secretsprovider.Source
	ssh            []sshprovider.AgentConfig
	outputs        []*outputSpec // none: build only
	attests        []string      // attestation types explicitly enabled (provenance, sbom)
	cacheImports   []client.CacheOptionsEntry
	cacheExports   []client.CacheOptionsEntry
	call           *callFunc            // --call other than build
	lintFailOn     string               // --lint's level; "" without --lint
	warnings       []string             // accepted flags that do nothing, for the user
	docker         *dockerEngine        // the --load engine, once CheckDocker reached it
	registryAuth   []RegistryCredential // --save's registry credentials (save.go)
	stdout         io.Writer
	progress       progressui.DisplayMode
	tags           []string
	platform       string
	platforms      []string // --platform list, normalized; see multiplatform.go
	buildPlatform  string   // forced builder platform; "" is dynamic
	tmpDir         string   // removed by Close; "" if none
	// serverSide: a source build on kiln's server (isolate.go): no Docker
	// config of the server's user, secrets from secretValues only.
	serverSide   bool
	secretValues map[string][]byte
}

// ContextDir is the local directory sent as the build context (for a stdin
// archive, the temporary directory it was extracted to).
func (r *Request) ContextDir() string { return r.contextDir }

// DockerfilePath is the absolute path of the Dockerfile that will be sent.
func (r *Request) DockerfilePath() string { return r.dockerfilePath }

// FrontendAttrs returns a copy of the options passed to the dockerfile
// frontend (filename, target, build-arg:*, label:*, context:*, ...).
func (r *Request) FrontendAttrs() map[string]string { return maps.Clone(r.frontendAttrs) }

// Tags are the validated -t values, as typed.
func (r *Request) Tags() []string { return slices.Clone(r.tags) }

// Platform is the requested target platform, normalized ("" for the
// builder's default).
func (r *Request) Platform() string { return r.platform }

// ProgressMode is the requested progress mode ("auto" when none was given).
func (r *Request) ProgressMode() string { return string(r.progress) }

// OutputType is the exporter of the first output ("local", "tar", "oci",
// "docker", "image"), or "" when the build has no output. See
// [Request.Outputs] for all of them.
func (r *Request) OutputType() string {
	if len(r.outputs) == 0 {
		return ""
	}
	return r.outputs[0].typ
}

// OutputDest is the absolute destination of the first output, "-" for
// stdout, or "" when the build has no output or the output is an image
// (pushed, loaded, or kept on the builder).
func (r *Request) OutputDest() string {
	if len(r.outputs) == 0 {
		return ""
	}
	return r.outputs[0].dest
}

// Close removes temporary files (e.g. the extracted stdin archive) and
// closes the connection to the Docker engine, if any. It is safe to call
// more than once.
func (r *Request) Close() error {
	if r == nil {
		return nil
	}
	if r.docker != nil {
		_ = r.docker.api.Close()
		r.docker = nil
	}
	if r.tmpDir == "" {
		return nil
	}
	dir := r.tmpDir
	r.tmpDir = ""
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing build temp dir: %w", err)
	}
	return nil
}

// Prepare validates every flag and input before anything talks to a
// server: the context exists (or the stdin archive extracts safely), the
// Dockerfile exists, and all flag syntax. Errors caused by user input wrap
// errdefs.ErrInvalid and name the flag and the value. On success the
// caller must Close the Request.
func Prepare(o Options) (_ *Request, retErr error) {
	r := &Request{
		frontendAttrs: map[string]string{},
		locals:        map[string]string{},
		ociStores:     map[string]string{},
		stdout:        o.Stdout,
	}
	defer func() {
		if retErr != nil {
			_ = r.Close()
		}
	}()

	// Cheap flag syntax first, so typos are reported before reading stdin.
	if err := r.parseProgress(o.Progress); err != nil {
		return nil, err
	}
	if err := r.parseTags(o.Tags); err != nil {
		return nil, err
	}
	if err := r.parseBuildArgs(o.BuildArgs); err != nil {
		return nil, err
	}
	if err := r.parseLabels(o.Labels); err != nil {
		return nil, err
	}
	if err := r.parseCacheFlags(o.NoCache, o.NoCacheFilter); err != nil {
		return nil, err
	}
	if err := r.parseNetwork(o.Network); err != nil {
		return nil, err
	}
	if err := r.parsePlatformFlags(o.Platform, o.BuildPlatform); err != nil {
		return nil, err
	}
	if err := r.parseOutputs(o.Outputs, o.Push, o.Load, o.Tags, o.Stdout); err != nil {
		return nil, err
	}
	if err := r.parseAttests(o.Attests, o.Provenance, o.SBOM); err != nil {
		return nil, err
	}
	if err := r.parseCache(o.CacheFrom, o.CacheTo); err != nil {
		return nil, err
	}
	call, err := parseCall(o.Call)
	if err != nil {
		return nil, err
	}
	r.call = call
	if err := r.parseLint(o.Lint, o.LintFailOn); err != nil {
		return nil, err
	}
	if r.call != nil && o.Lint {
		return nil, invalidf("--lint and --call=%s: give one (--call=check prints the same checks without building)", o.Call)
	}
	if err := r.checkMultiPlatformOutput(); err != nil {
		return nil, err
	}
	if o.Target != "" {
		if strings.TrimSpace(o.Target) != o.Target || strings.ContainsAny(o.Target, " \t\n,") {
			return nil, invalidf("--target %q: not a valid stage name", o.Target)
		}
		r.frontendAttrs["target"] = o.Target
	}
	if err := r.parseSecrets(o.Secrets); err != nil {
		return nil, err
	}
	if err := r.parseSSH(o.SSH); err != nil {
		return nil, err
	}
	if err := r.parseBuildContexts(o.BuildContexts); err != nil {
		return nil, err
	}

	// Then the inputs on disk (and stdin).
	if err := r.prepareContext(o); err != nil {
		return nil, err
	}
	r.locals[mountContext] = r.contextDir
	r.locals[mountDockerfile] = filepath.Dir(r.dockerfilePath)
	r.frontendAttrs["filename"] = filepath.Base(r.dockerfilePath)
	return r, nil
}

// tempDir returns the request's temporary directory, creating it on first use.
func (r *Request) tempDir() (string, error) {
	if r.tmpDir != "" {
		return r.tmpDir, nil
	}
	d, err := os.MkdirTemp("", "kiln-build-")
	if err != nil {
		return "", fmt.Errorf("creating temp dir: %w", err)
	}
	r.tmpDir = d
	return d, nil
}

func (r *Request) prepareContext(o Options) error {
	switch {
	case o.ContextPath == "":
		return invalidf("build context: a path (or \"-\" for a tar archive on stdin) is required")
	case o.ContextPath == "-" && o.Dockerfile == "-":
		return invalidf("-f \"-\": stdin is already used for the build context; it cannot also be the Dockerfile")
	case o.ContextPath == "-":
		return r.prepareStdinContext(o)
	}

	dir, err := filepath.Abs(o.ContextPath)
	if err != nil {
		return invalidWrap(err, "build context %q", o.ContextPath)
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return invalidf("build context %q: no such directory", o.ContextPath)
	case err != nil:
		return invalidWrap(err, "build context %q", o.ContextPath)
	case !fi.IsDir():
		return invalidf("build context %q: not a directory (a tar archive must be given on stdin as \"-\")", o.ContextPath)
	}
	r.contextDir = dir

	switch o.Dockerfile {
	case "":
		return r.setDockerfile(filepath.Join(dir, "Dockerfile"))
	case "-":
		if o.Stdin == nil {
			return invalidf("-f \"-\": no stdin to read the Dockerfile from")
		}
		return r.dockerfileFromReader(o.Stdin, "-f \"-\"")
	default:
		p, err := filepath.Abs(o.Dockerfile)
		if err != nil {
			return invalidWrap(err, "-f %q", o.Dockerfile)
		}
		return r.setDockerfile(p)
	}
}

// setDockerfile checks that p is a regular file (after following links).
func (r *Request) setDockerfile(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return invalidf("Dockerfile not found: %s", p)
		}
		return invalidWrap(err, "Dockerfile %s", p)
	}
	if !fi.Mode().IsRegular() {
		return invalidf("Dockerfile %s: not a regular file", p)
	}
	r.dockerfilePath = p
	return nil
}

// dockerfileFromReader stores a Dockerfile read from rd in the temp dir.
func (r *Request) dockerfileFromReader(rd io.Reader, what string) error {
	tmp, err := r.tempDir()
	if err != nil {
		return err
	}
	dir := filepath.Join(tmp, "dockerfile")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	dt, err := io.ReadAll(io.LimitReader(rd, maxStdinDockerfile+1))
	if err != nil {
		return fmt.Errorf("%s: reading stdin: %w", what, err)
	}
	if len(dt) > maxStdinDockerfile {
		return invalidf("%s: Dockerfile on stdin is larger than %d MiB", what, maxStdinDockerfile>>20)
	}
	if len(dt) == 0 {
		return invalidf("%s: stdin is empty", what)
	}
	p := filepath.Join(dir, "Dockerfile")
	if err := os.WriteFile(p, dt, 0o600); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	r.dockerfilePath = p
	return nil
}

func (r *Request) prepareStdinContext(o Options) error {
	if o.Stdin == nil {
		return invalidf("build context \"-\": no stdin to read the archive from")
	}
	tmp, err := r.tempDir()
	if err != nil {
		return err
	}
	root := filepath.Join(tmp, "context")
	if err := os.Mkdir(root, 0o700); err != nil {
		return err
	}
	r.contextDir = root

	isTar, rd, err := sniffArchive(o.Stdin)
	if err != nil {
		return invalidWrap(err, "build context \"-\"")
	}
	if !isTar {
		// `docker build - < Dockerfile`: stdin is the Dockerfile, the
		// context is empty.
		if o.Dockerfile != "" {
			return invalidf("-f %q: stdin holds a Dockerfile, not a tar archive; -f cannot be used with it", o.Dockerfile)
		}
		return r.dockerfileFromReader(rd, "build context \"-\"")
	}
	if _, err := archive.Extract(rd, root, stdinLimits(), archive.Policy{}); err != nil {
		return fmt.Errorf("build context \"-\": %w", err)
	}

	name := o.Dockerfile
	if name == "" {
		name = "Dockerfile"
	}
	rel := filepath.ToSlash(name)
	if filepath.IsAbs(name) {
		return invalidf("-f %q: with a stdin archive, -f names a file inside the archive and must be relative", name)
	}
	resolved, err := archive.ResolveInRoot(root, rel)
	if err != nil {
		return invalidWrap(err, "-f %q", name)
	}
	fi, err := os.Lstat(resolved)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return invalidf("Dockerfile not found: %s (in the stdin archive)", rel)
		}
		return invalidWrap(err, "-f %q", name)
	}
	if !fi.Mode().IsRegular() {
		return invalidf("Dockerfile %s (in the stdin archive): not a regular file", rel)
	}
	r.dockerfilePath = resolved
	return nil
}

func (r *Request) parseProgress(v string) error {
	switch m := progressui.DisplayMode(v); m {
	case "":
		r.progress = progressui.AutoMode
	case progressui.AutoMode, progressui.PlainMode, progressui.TtyMode, progressui.QuietMode, progressui.RawJSONMode:
		r.progress = m
	default:
		return invalidf("--progress %q: unknown mode (supported: auto, plain, tty, quiet, rawjson)", v)
	}
	return nil
}

func (r *Request) parseTags(tags []string) error {
	for _, t := range tags {
		if t == "" {
			return invalidf("-t %q: empty image reference", t)
		}
		if _, err := reference.ParseNormalizedNamed(t); err != nil {
			return invalidWrap(err, "-t %q", t)
		}
		r.tags = append(r.tags, t)
	}
	return nil
}

func (r *Request) parseBuildArgs(args []string) error {
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if k == "" || strings.TrimSpace(k) != k {
			return invalidf("--build-arg %q: missing or malformed name (want NAME=VALUE or NAME)", a)
		}
		if !ok {
			env, set := os.LookupEnv(k)
			if !set {
				continue // like buildx: an unset variable is skipped
			}
			v = env
		}
		r.frontendAttrs["build-arg:"+k] = v
	}
	return nil
}

func (r *Request) parseLabels(labels []string) error {
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		if k == "" || strings.TrimSpace(k) != k {
			return invalidf("--label %q: missing or malformed name (want KEY=VALUE)", l)
		}
		r.frontendAttrs["label:"+k] = v
	}
	return nil
}

func (r *Request) parseCacheFlags(noCache bool, filter []string) error {
	for _, f := range filter {
		if f == "" || strings.ContainsAny(f, ", \t") {
			return invalidf("--no-cache-filter %q: not a valid stage name", f)
		}
	}
	switch {
	case noCache:
		r.frontendAttrs["no-cache"] = ""
	case len(filter) > 0:
		r.frontendAttrs["no-cache"] = strings.Join(filter, ",")
	}
	return nil
}

func (r *Request) parseNetwork(n string) error {
	switch n {
	case "", "default":
	case "none":
		r.frontendAttrs["force-network-mode"] = "none"
	case "host":
		return invalidf("--network %q: host networking is not supported (supported: default, none)", n)
	default:
		return invalidf("--network %q: unknown network mode (supported: default, none)", n)
	}
	return nil
}

// parseCSV splits a comma-separated flag value the way buildx does (CSV,
// so a field may be quoted to contain a comma).
func parseCSV(v string) ([]string, error) {
	cr := csv.NewReader(strings.NewReader(v))
	cr.LazyQuotes = false
	fields, err := cr.Read()
	if err != nil {
		return nil, err
	}
	return fields, nil
}

func (r *Request) parseSecrets(values []string) error {
	seen := map[string]bool{}
	for _, v := range values {
		if !strings.Contains(v, "=") {
			return invalidf("--secret %q: missing id=", v)
		}
		fields, err := parseCSV(v)
		if err != nil {
			return invalidWrap(err, "--secret %q", v)
		}
		var src secretsprovider.Source
		typ := ""
		for _, f := range fields {
			k, val, ok := strings.Cut(f, "=")
			if !ok {
				return invalidf("--secret %q: field %q is not key=value", v, f)
			}
			switch strings.ToLower(k) {
			case "type":
				if val != "file" && val != "env" {
					return invalidf("--secret %q: unsupported type %q (supported: file, env)", v, val)
				}
				typ = val
			case "id":
				src.ID = val
			case "src", "source":
				src.FilePath = val
			case "env":
				src.Env = val
			default:
				return invalidf("--secret %q: unknown key %q (supported: id, src, env, type)", v, k)
			}
		}
		if src.ID == "" {
			return invalidf("--secret %q: missing id=", v)
		}
		if typ == "env" && src.Env == "" {
			// type=env,id=x,src=VAR names the variable through src.
			src.Env, src.FilePath = src.FilePath, ""
		}
		if typ == "file" && src.Env != "" {
			return invalidf("--secret %q: type=file cannot take env=", v)
		}
		if src.Env != "" && src.FilePath != "" {
			return invalidf("--secret %q: give either src= or env=, not both", v)
		}
		if typ == "file" && src.FilePath == "" {
			src.FilePath = src.ID
		}
		if typ == "env" && src.Env == "" {
			src.Env = src.ID
		}
		if seen[src.ID] {
			return invalidf("--secret %q: duplicate secret id %q", v, src.ID)
		}
		seen[src.ID] = true
		if src.FilePath != "" {
			if err := checkReadable(src.FilePath); err != nil {
				return invalidWrap(err, "--secret %q", v)
			}
		}
		// NewStore resolves "id=x" alone (env x when set, else file x)
		// and checks that files exist and are not too big.
		if _, err := secretsprovider.NewStore([]secretsprovider.Source{src}); err != nil {
			return invalidWrap(err, "--secret %q", v)
		}
		if src.FilePath != "" {
			if abs, err := filepath.Abs(src.FilePath); err == nil {
				src.FilePath = abs
			}
		}
		r.secrets = append(r.secrets, src)
	}
	return nil
}

func (r *Request) parseSSH(values []string) error {
	for _, v := range values {
		id, paths, hasPaths := strings.Cut(v, "=")
		if id == "" {
			return invalidf("--ssh %q: missing id (want default, ID or ID=PATH[,PATH])", v)
		}
		cfg := sshprovider.AgentConfig{ID: id}
		if hasPaths {
			for _, p := range strings.Split(paths, ",") {
				if p == "" {
					return invalidf("--ssh %q: empty path", v)
				}
				cfg.Paths = append(cfg.Paths, p)
			}
		}
		if len(cfg.Paths) == 0 && os.Getenv("SSH_AUTH_SOCK") == "" {
			return invalidf("--ssh %q: no agent socket: SSH_AUTH_SOCK is not set (or give %s=PATH)", v, id)
		}
		for _, p := range cfg.Paths {
			if err := checkReadable(p); err != nil {
				return invalidWrap(err, "--ssh %q", v)
			}
		}
		r.ssh = append(r.ssh, cfg)
		// Validate now: sockets and keys must exist, keys must parse, ids
		// must be unique.
		if _, err := sshprovider.NewSSHAgentProvider(slices.Clone(r.ssh)); err != nil {
			return invalidWrap(err, "--ssh %q", v)
		}
	}
	return nil
}

// contextName normalizes a --build-context name the way buildx does, so
// "docker.io/library/alpine:latest=..." matches `FROM alpine`.
func contextName(raw string) (string, error) {
	named, err := reference.ParseNormalizedNamed(raw)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(reference.FamiliarString(named), ":latest"), nil
}

func (r *Request) parseBuildContexts(values []string) error {
	for _, v := range values {
		rawName, val, ok := strings.Cut(v, "=")
		if !ok || rawName == "" || val == "" {
			return invalidf("--build-context %q: want NAME=VALUE", v)
		}
		name, err := contextName(rawName)
		if err != nil {
			return invalidWrap(err, "--build-context %q: invalid name %q", v, rawName)
		}
		key := "context:" + name
		if _, dup := r.frontendAttrs[key]; dup {
			return invalidf("--build-context %q: context %q given more than once", v, name)
		}
		switch {
		case strings.HasPrefix(val, "target:"):
			return invalidf("--build-context %q: target: contexts are only supported by bake", v)
		case strings.HasPrefix(val, "docker-image://"):
			ref := strings.TrimPrefix(val, "docker-image://")
			if _, err := reference.ParseNormalizedNamed(ref); err != nil {
				return invalidWrap(err, "--build-context %q: invalid image reference %q", v, ref)
			}
			r.frontendAttrs[key] = val
		case strings.HasPrefix(val, "oci-layout://"):
			attr, storeID, dir, err := parseOCILayout(strings.TrimPrefix(val, "oci-layout://"))
			if err != nil {
				return invalidWrap(err, "--build-context %q", v)
			}
			r.ociStores[storeID] = dir
			r.frontendAttrs[key] = attr
		case isRemoteContext(val):
			r.frontendAttrs[key] = val
		default:
			dir, err := filepath.Abs(val)
			if err != nil {
				return invalidWrap(err, "--build-context %q", v)
			}
			fi, err := os.Stat(dir)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return invalidf("--build-context %q: no such directory %s", v, dir)
				}
				return invalidWrap(err, "--build-context %q", v)
			}
			if !fi.IsDir() {
				return invalidf("--build-context %q: %s is not a directory", v, dir)
			}
			mount := localMountName(name)
			if _, dup := r.locals[mount]; dup {
				return invalidf("--build-context %q: context %q given more than once", v, name)
			}
			r.locals[mount] = dir
			r.frontendAttrs[key] = "local:" + mount
		}
	}
	return nil
}

// localMountName is the session mount a local named context is sent as;
// the names of the main context and Dockerfile mounts are avoided.
func localMountName(name string) string {
	if name == mountContext || name == mountDockerfile {
		return "_" + name
	}
	return name
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

// checkReadable reports, in a short form, why p cannot be read.
func checkReadable(p string) error {
	_, err := os.Stat(p)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", p, pe.Err)
	}
	return err
}
