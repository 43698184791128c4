package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/moby/buildkit/session/sshforward/sshprovider"
	"github.com/moby/buildkit/util/progress/progressui"

	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// IO is what a build reads and writes besides its request.
type IO struct {
	// Stdout receives an output whose dest is "-" (-o type=tar,dest=-).
	// It is only required in that case.
	Stdout io.Writer
	// Progress is the progress display: "auto" (or ""), "plain", "tty",
	// "quiet" or "rawjson".
	Progress string
}

// Limits on an archive read from stdin.
const (
	maxStdinEntries    = 100_000
	maxStdinBytes      = 2 << 30  // 2 GiB of file content
	maxStdinDockerfile = 16 << 20 // a lone Dockerfile instead of an archive
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
	locals         map[string]string        // mount name → absolute directory
	ociStores      map[string]string        // store id → oci layout directory
	secrets        []secretsprovider.Source // from files and the environment
	secretValues   map[string][]byte        // given as values (source builds, the SDK)
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
	platforms      []platform.Platform // see multiplatform.go
	buildPlatform  platform.Platform   // forced builder platform; zero is dynamic
	tmpDir         string              // removed by Close; "" if none
	// serverSide: a source build on kiln's server (isolate.go): no Docker
	// config of the server's user.
	serverSide bool
	// git is a git context (git.go); "" for a local one.
	git gitContext
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

// Platform is the requested target platform (zero for the builder's
// default, and for a multi-platform build).
func (r *Request) Platform() platform.Platform {
	if len(r.platforms) != 1 {
		return platform.Platform{}
	}
	return r.platforms[0]
}

// ProgressMode is the requested progress mode ("auto" when none was given).
func (r *Request) ProgressMode() string { return string(r.progress) }

// OutputType is the exporter of the first output ("local", "tar", "oci",
// "docker", "image"), or "" when the build has no output. See
// [Request.Outputs] for all of them.
func (r *Request) OutputType() string {
	if len(r.outputs) == 0 {
		return ""
	}
	return r.outputs[0].Type
}

// OutputDest is the absolute destination of the first output, "-" for
// stdout, or "" when the build has no output or the output is an image
// (pushed, loaded, or kept on the builder).
func (r *Request) OutputDest() string {
	if len(r.outputs) == 0 {
		return ""
	}
	return r.outputs[0].Dest
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

// Prepare checks a build request (see [buildreq.Request.Validate]) and its
// inputs before anything talks to a server: the context exists (or the
// stdin archive extracts safely), the Dockerfile exists, named contexts
// and output destinations are usable. Errors caused by the request wrap
// errdefs.ErrInvalid and name the field. On success the caller must Close
// the Request.
func Prepare(req buildreq.Request, o IO) (_ *Request, retErr error) {
	r := &Request{
		frontendAttrs: map[string]string{},
		locals:        map[string]string{},
		ociStores:     map[string]string{},
		stdout:        o.Stdout,
		tags:          slices.Clone(req.Tags),
		platforms:     slices.Clone(req.Platforms),
		buildPlatform: req.BuildPlatform,
	}
	defer func() {
		if retErr != nil {
			_ = r.Close()
		}
	}()

	// What needs no disk first, so mistakes are reported before reading
	// stdin.
	if err := r.setProgress(o.Progress); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	r.setFrontendOptions(req)
	if err := r.setOutputs(req.Outputs); err != nil {
		return nil, err
	}
	if err := r.setAttests(req.Attests); err != nil {
		return nil, err
	}
	r.setCaches(req.CacheFrom, req.CacheTo)
	r.setCall(req.Call, req.Lint)
	if err := r.setSecrets(req.Secrets); err != nil {
		return nil, err
	}
	if err := r.setSSH(req.SSH); err != nil {
		return nil, err
	}
	if err := r.setNamedContexts(req.NamedContexts); err != nil {
		return nil, err
	}

	// Then the inputs on disk (and stdin).
	if req.Context.Git != "" {
		if err := r.prepareGitContext(req.Context.Git, req.Dockerfile); err != nil {
			return nil, err
		}
		return r, nil
	}
	if err := r.prepareContext(req.Context, req.Dockerfile); err != nil {
		return nil, err
	}
	r.locals[mountContext] = r.contextDir
	r.locals[mountDockerfile] = filepath.Dir(r.dockerfilePath)
	r.frontendAttrs["filename"] = filepath.Base(r.dockerfilePath)
	return r, nil
}

// setFrontendOptions sets the Dockerfile frontend's attributes that are
// the request's values as they are.
func (r *Request) setFrontendOptions(req buildreq.Request) {
	for k, v := range req.Args {
		r.frontendAttrs["build-arg:"+k] = v
	}
	for k, v := range req.Labels {
		r.frontendAttrs["label:"+k] = v
	}
	switch {
	case req.NoCache:
		r.frontendAttrs["no-cache"] = ""
	case len(req.NoCacheFilter) > 0:
		r.frontendAttrs["no-cache"] = strings.Join(req.NoCacheFilter, ",")
	}
	if req.Network == "none" {
		r.frontendAttrs["force-network-mode"] = "none"
	}
	// With several platforms, "platform" is set per solve (see SolveMulti).
	if len(req.Platforms) == 1 {
		r.frontendAttrs["platform"] = req.Platforms[0].String()
	}
	if req.Target != "" {
		r.frontendAttrs["target"] = req.Target
	}
}

// setSecrets keeps files and environment variables as sources the
// session reads when the builder asks (checked now: files exist and are
// not too big), and values in memory.
func (r *Request) setSecrets(secrets []buildreq.Secret) error {
	for _, s := range secrets {
		if s.Value != nil {
			if r.secretValues == nil {
				r.secretValues = map[string][]byte{}
			}
			r.secretValues[s.ID] = slices.Clone(s.Value)
			continue
		}
		src := secretsprovider.Source{ID: s.ID, FilePath: s.Src, Env: s.Env}
		if _, err := secretsprovider.NewStore([]secretsprovider.Source{src}); err != nil {
			return errdefs.InvalidWrapf(err, "secret %q", s.ID)
		}
		r.secrets = append(r.secrets, src)
	}
	return nil
}

// setSSH keeps the SSH agents and keys to forward, checked now: sockets
// and keys exist, keys parse.
func (r *Request) setSSH(ssh []buildreq.SSH) error {
	for _, s := range ssh {
		r.ssh = append(r.ssh, sshprovider.AgentConfig{ID: s.ID, Paths: slices.Clone(s.Paths)})
	}
	if len(r.ssh) == 0 {
		return nil
	}
	if _, err := sshprovider.NewSSHAgentProvider(slices.Clone(r.ssh)); err != nil {
		return errdefs.InvalidWrapf(err, "ssh")
	}
	return nil
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

func (r *Request) prepareContext(c buildreq.Context, df buildreq.Dockerfile) error {
	if c.Tar != nil {
		return r.prepareStdinContext(c.Tar, df)
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return errdefs.InvalidWrapf(err, "build context %q", c.Dir)
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errdefs.Invalidf("build context %q: no such directory", c.Dir)
	case err != nil:
		return errdefs.InvalidWrapf(err, "build context %q", c.Dir)
	case !fi.IsDir():
		return errdefs.Invalidf("build context %q: not a directory (a tar archive must be given on stdin as \"-\")", c.Dir)
	}
	r.contextDir = dir

	switch {
	case df.Inline != nil:
		return r.dockerfileFromReader(bytes.NewReader(df.Inline), "-f \"-\"")
	case df.Path == "":
		return r.setDockerfile(filepath.Join(dir, "Dockerfile"))
	default:
		p, err := filepath.Abs(df.Path)
		if err != nil {
			return errdefs.InvalidWrapf(err, "-f %q", df.Path)
		}
		return r.setDockerfile(p)
	}
}

// setDockerfile checks that p is a regular file (after following links).
func (r *Request) setDockerfile(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errdefs.Invalidf("Dockerfile not found: %s", p)
		}
		return errdefs.InvalidWrapf(err, "Dockerfile %s", p)
	}
	if !fi.Mode().IsRegular() {
		return errdefs.Invalidf("Dockerfile %s: not a regular file", p)
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
		return errdefs.Invalidf("%s: Dockerfile on stdin is larger than %d MiB", what, maxStdinDockerfile>>20)
	}
	if len(dt) == 0 {
		return errdefs.Invalidf("%s: stdin is empty", what)
	}
	p := filepath.Join(dir, "Dockerfile")
	if err := os.WriteFile(p, dt, 0o600); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	r.dockerfilePath = p
	return nil
}

// prepareStdinContext extracts the context archive read from stdin (or
// keeps the lone Dockerfile it holds instead).
func (r *Request) prepareStdinContext(stdin io.Reader, df buildreq.Dockerfile) error {
	if df.Inline != nil {
		return errdefs.Invalidf("-f \"-\": stdin is already used for the build context; it cannot also be the Dockerfile")
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

	isTar, rd, err := sniffArchive(stdin)
	if err != nil {
		return errdefs.InvalidWrapf(err, "build context \"-\"")
	}
	if !isTar {
		// `docker build - < Dockerfile`: stdin is the Dockerfile, the
		// context is empty.
		if df.Path != "" {
			return errdefs.Invalidf("-f %q: stdin holds a Dockerfile, not a tar archive; -f cannot be used with it", df.Path)
		}
		return r.dockerfileFromReader(rd, "build context \"-\"")
	}
	if _, err := archive.Extract(rd, root, stdinLimits(), archive.Policy{}); err != nil {
		return fmt.Errorf("build context \"-\": %w", err)
	}

	name := df.Path
	if name == "" {
		name = "Dockerfile"
	}
	rel := filepath.ToSlash(name)
	if filepath.IsAbs(name) {
		return errdefs.Invalidf("-f %q: with a stdin archive, -f names a file inside the archive and must be relative", name)
	}
	resolved, err := archive.ResolveInRoot(root, rel)
	if err != nil {
		return errdefs.InvalidWrapf(err, "-f %q", name)
	}
	fi, err := os.Lstat(resolved)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errdefs.Invalidf("Dockerfile not found: %s (in the stdin archive)", rel)
		}
		return errdefs.InvalidWrapf(err, "-f %q", name)
	}
	if !fi.Mode().IsRegular() {
		return errdefs.Invalidf("Dockerfile %s (in the stdin archive): not a regular file", rel)
	}
	r.dockerfilePath = resolved
	return nil
}

func (r *Request) setProgress(v string) error {
	switch m := progressui.DisplayMode(v); m {
	case "":
		r.progress = progressui.AutoMode
	case progressui.AutoMode, progressui.PlainMode, progressui.TtyMode, progressui.QuietMode, progressui.RawJSONMode:
		r.progress = m
	default:
		return errdefs.Invalidf("--progress %q: unknown mode (supported: auto, plain, tty, quiet, rawjson)", v)
	}
	return nil
}

// setNamedContexts turns named contexts into frontend attributes, local
// directories into session mounts and OCI layouts into session stores.
func (r *Request) setNamedContexts(contexts map[string]buildreq.NamedContext) error {
	for _, name := range slices.Sorted(maps.Keys(contexts)) {
		c := contexts[name]
		label := "--build-context " + strconv.Quote(name+"="+c.String())
		key := "context:" + name
		switch {
		case c.Image != "":
			r.frontendAttrs[key] = "docker-image://" + c.Image
		case c.OCILayout != "":
			attr, storeID, dir, err := parseOCILayout(c.OCILayout)
			if err != nil {
				return errdefs.InvalidWrapf(err, "%s", label)
			}
			r.ociStores[storeID] = dir
			r.frontendAttrs[key] = attr
		case c.URL != "":
			r.frontendAttrs[key] = c.URL
		default:
			dir, err := filepath.Abs(c.Dir)
			if err != nil {
				return errdefs.InvalidWrapf(err, "%s", label)
			}
			fi, err := os.Stat(dir)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return errdefs.Invalidf("%s: no such directory %s", label, dir)
				}
				return errdefs.InvalidWrapf(err, "%s", label)
			}
			if !fi.IsDir() {
				return errdefs.Invalidf("%s: %s is not a directory", label, dir)
			}
			mount := localMountName(name)
			if _, dup := r.locals[mount]; dup {
				return errdefs.Invalidf("%s: context %q given more than once", label, name)
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
