package cli

// kiln build --detach: pack the context, upload it, and queue a build that
// kiln runs itself (the platform API, kiln.v1.SourceBuildService). The
// command ends once the build is queued; `kiln builds logs -f ID` follows it.

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/spf13/pflag"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/retry"
	"github.com/kiln-dev/kiln/internal/units"
)

// outsideDockerfile is where a -f Dockerfile from outside the context goes
// in the archive.
const outsideDockerfile = ".kiln/Dockerfile"

// maxSecretSize is the largest --secret value sent, as BuildKit's own
// limit for a secret.
const maxSecretSize = 500 * 1024

const imagePushedWhy = "the image is pushed to kiln's registry as <project>:<build id> and the -t tags"

// detachUnsupported are `kiln build` flags a server-side build cannot
// honour, and why. A flag is refused when it is set to anything but its
// default.
var detachUnsupported = []struct{ flag, why string }{
	{"load", imagePushedWhy},
	{"push", imagePushedWhy},
	{"output", imagePushedWhy},
	{"save", imagePushedWhy},
	{"save-tag", imagePushedWhy + " (use -t)"},
	{"iidfile", "the build finishes after this command returns (see `kiln builds get ID` for the digest)"},
	{"metadata-file", "the build finishes after this command returns (see `kiln builds get ID --json`)"},
	{"ssh", "the build runs on the server, out of reach of this machine's SSH agent and keys"},
	{"build-context", "only the one uploaded context is sent"},
	{"cache-from", "a server build uses the project's persistent cache"},
	{"cache-to", "a server build uses the project's persistent cache"},
	{"no-cache-filter", "a server build takes only --no-cache, for the whole build"},
	{"call", "a server build only builds and pushes the image"},
	{"check", "a server build only builds and pushes the image"},
	{"lint", "a server build only builds and pushes the image"},
	{"lint-fail-on", "a server build only builds and pushes the image"},
	{"label", "a server build takes no labels; set them with LABEL in the Dockerfile"},
	{"attest", "the server decides the attestations of the image it pushes"},
	{"provenance", "the server decides the attestations of the image it pushes"},
	{"sbom", "the server decides the attestations of the image it pushes"},
	{"network", "RUN steps of a server build use the default network"},
	{"build-platform", "the server picks the builder for each platform"},
}

// checkDetachFlags refuses flags that cannot apply to a detached build,
// --customer without --detach, and --customer with --project.
func checkDetachFlags(bf *buildFlags, flags *pflag.FlagSet) error {
	if !bf.detach {
		return fmt.Errorf("--customer needs --detach: a customer's project builds only from an uploaded context: %w", errdefs.ErrInvalid)
	}
	if flags.Changed("customer") && flags.Changed("project") {
		return fmt.Errorf("--customer and --project: give one (a customer id names its own project): %w", errdefs.ErrInvalid)
	}
	if flags.Changed("customer") && strings.TrimSpace(bf.customer) == "" {
		return fmt.Errorf("--customer: empty customer id: %w", errdefs.ErrInvalid)
	}
	for _, u := range detachUnsupported {
		f := flags.Lookup(u.flag)
		if f == nil || !f.Changed || f.Value.String() == f.DefValue {
			continue
		}
		return fmt.Errorf("--%s cannot be used with --detach: %s: %w", u.flag, u.why, errdefs.ErrInvalid)
	}
	switch bf.progress {
	case "", "auto", "plain", "tty", "quiet", "rawjson":
	default:
		return fmt.Errorf("--progress %q: unknown mode (supported: auto, plain, tty, quiet, rawjson): %w", bf.progress, errdefs.ErrInvalid)
	}
	if bf.opts.ContextPath == "-" {
		return fmt.Errorf("--detach needs a context directory, not \"-\" (stdin): %w", errdefs.ErrInvalid)
	}
	if bf.opts.Dockerfile == "-" {
		return fmt.Errorf("-f \"-\" cannot be used with --detach: give the Dockerfile's path: %w", errdefs.ErrInvalid)
	}
	return nil
}

// runDetach uploads the context and queues a server-side build. Only the
// build id goes to stdout, so `id=$(kiln build --detach .)` works.
func runDetach(ctx context.Context, g *globals, bf *buildFlags, flags *pflag.FlagSet, stdout, stderr io.Writer) error {
	if err := checkDetachFlags(bf, flags); err != nil {
		return err
	}
	// Everything local is checked before talking to the server.
	req, contextDir, dockerfile, err := detachRequest(bf.opts)
	if err != nil {
		return err
	}
	ref := &kilnv1.ProjectRef{}
	if bf.customer != "" {
		ref.Ref = &kilnv1.ProjectRef_CustomerId{CustomerId: bf.customer}
	} else {
		projectDir := contextDir
		if projectDir == "" {
			projectDir = "." // a git context: kiln.json from the working directory
		}
		projectID, err := client.FindProject(bf.project, projectDir)
		if err != nil {
			return err
		}
		ref.Ref = &kilnv1.ProjectRef_ProjectId{ProjectId: projectID}
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}

	api := cfg.SourceBuilds()
	if req.GitUrl == "" {
		// A git context is fetched by the builder: nothing to upload.
		if req.ContextKey, err = uploadDetached(ctx, api, ref, req, contextDir, dockerfile, bf.progress, stderr); err != nil {
			return err
		}
	}

	req.Project = ref // as given: a customer's build is recorded with its customer id
	created, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[kilnv1.CreateBuildResponse], error) {
		return api.CreateBuild(ctx, connect.NewRequest(req))
	})
	if err != nil {
		return fmt.Errorf("create build: %w", err)
	}
	id := created.Msg.BuildId
	fmt.Fprintln(stdout, id)
	fmt.Fprintf(stderr, "build %s queued in project %s; follow it with: kiln builds logs -f %s\n", id, created.Msg.ProjectId, id)
	return nil
}

// uploadDetached packs the context and uploads it for a detached build,
// setting req's Dockerfile path inside the archive; it returns the
// context key.
func uploadDetached(ctx context.Context, api kilnv1connect.SourceBuildServiceClient, ref *kilnv1.ProjectRef, req *kilnv1.CreateBuildRequest,
	contextDir, dockerfile, progressMode string, stderr io.Writer) (string, error) {
	archive, err := packContext(contextDir, dockerfile, func(msg string) { fmt.Fprintf(stderr, "kiln: warning: %s\n", msg) })
	if err != nil {
		return "", err
	}
	defer archive.Close()
	req.Dockerfile = archive.dockerfile

	up, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[kilnv1.GenerateUploadURLResponse], error) {
		return api.GenerateUploadURL(ctx, connect.NewRequest(&kilnv1.GenerateUploadURLRequest{Project: ref, Size: archive.size, Sha256: archive.sha256}))
	})
	if err != nil {
		return "", fmt.Errorf("get an upload URL for the context: %w", err)
	}
	if limit := up.Msg.MaxSize; limit > 0 && archive.size > limit {
		return "", fmt.Errorf("build context is %s packed; the server accepts at most %s (add large files to .dockerignore): %w",
			units.Bytes(archive.size), units.Bytes(limit), errdefs.ErrExhausted)
	}
	progress := newUploadProgress(stderr, uploadProgressStyle(progressMode, stderr), "context", archive.size)
	if err := putArchive(ctx, up.Msg.Url, up.Msg.Headers, archive, progress); err != nil {
		return "", err
	}

	return up.Msg.ContextKey, nil
}

// detachPaths returns the context directory and the Dockerfile, both
// absolute. A relative -f is relative to the working directory, as with
// buildx.
func detachPaths(contextPath, dockerfile string) (contextDir, dockerfilePath string, err error) {
	if contextPath == "" {
		return "", "", fmt.Errorf("build context: a directory is required: %w", errdefs.ErrInvalid)
	}
	contextDir, err = filepath.Abs(contextPath)
	if err != nil {
		return "", "", fmt.Errorf("build context %q: %v: %w", contextPath, err, errdefs.ErrInvalid)
	}
	// Links are resolved so the walk starts in a directory (it follows no
	// link) and the Dockerfile is found inside the context or not.
	resolved, err := filepath.EvalSymlinks(contextDir)
	if err == nil {
		contextDir = resolved
	}
	fi, err := os.Stat(contextDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("build context %q: no such directory: %w", contextPath, errdefs.ErrInvalid)
	case err != nil:
		return "", "", fmt.Errorf("build context %q: %v: %w", contextPath, err, errdefs.ErrInvalid)
	case !fi.IsDir():
		return "", "", fmt.Errorf("build context %q: not a directory: %w", contextPath, errdefs.ErrInvalid)
	}
	dockerfilePath = filepath.Join(contextDir, "Dockerfile")
	if dockerfile != "" {
		if dockerfilePath, err = filepath.Abs(dockerfile); err != nil {
			return "", "", fmt.Errorf("-f %q: %v: %w", dockerfile, err, errdefs.ErrInvalid)
		}
		if d, err := filepath.EvalSymlinks(filepath.Dir(dockerfilePath)); err == nil {
			dockerfilePath = filepath.Join(d, filepath.Base(dockerfilePath))
		}
	}
	fi, err = os.Stat(dockerfilePath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("Dockerfile not found: %s (give its path with -f): %w", dockerfilePath, errdefs.ErrInvalid)
	case err != nil:
		return "", "", fmt.Errorf("Dockerfile %s: %v: %w", dockerfilePath, err, errdefs.ErrInvalid)
	case !fi.Mode().IsRegular():
		return "", "", fmt.Errorf("Dockerfile %s: not a regular file: %w", dockerfilePath, errdefs.ErrInvalid)
	}
	return contextDir, dockerfilePath, nil
}

// detachRequest parses the flags (as `kiln build` does) into the API's
// request, and returns the context directory and Dockerfile to pack. The
// -t values are the server's to read: a tag ("v1") or a reference.
func detachRequest(flags buildreq.Flags) (_ *kilnv1.CreateBuildRequest, contextDir, dockerfile string, _ error) {
	tags := flags.Tags
	flags.Tags = nil
	for _, t := range tags {
		if strings.TrimSpace(t) == "" {
			return nil, "", "", fmt.Errorf("-t %q: empty tag: %w", t, errdefs.ErrInvalid)
		}
	}
	parsed, err := buildreq.ParseFlags(flags)
	if err != nil {
		return nil, "", "", err
	}
	if parsed.Context.Git == "" {
		contextDir, dockerfile, err = detachPaths(parsed.Context.Dir, parsed.Dockerfile.Path)
		if err != nil {
			return nil, "", "", err
		}
	}
	secrets, err := secretValues(parsed.Secrets)
	if err != nil {
		return nil, "", "", err
	}
	req := &kilnv1.CreateBuildRequest{
		Target:    parsed.Target,
		Tags:      tags,
		NoCache:   parsed.NoCache,
		BuildArgs: parsed.Args,
		Secrets:   secrets,
		Platforms: platform.Strings(parsed.Platforms),
	}
	if parsed.Context.Git != "" {
		req.GitUrl, req.Dockerfile = parsed.Context.Git, parsed.Dockerfile.Path
	}
	return req, contextDir, dockerfile, nil
}

// secretValues reads each secret's value here, from its file or
// environment variable: the values travel in CreateBuild.
func secretValues(secrets []buildreq.Secret) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range secrets {
		if s.Env != "" {
			v, set := os.LookupEnv(s.Env)
			if !set {
				return nil, fmt.Errorf("--secret id=%s: environment variable %s is not set: %w", s.ID, s.Env, errdefs.ErrInvalid)
			}
			out[s.ID] = v
			continue
		}
		v, err := readSecretFile(s.Src)
		if err != nil {
			return nil, fmt.Errorf("--secret id=%s: %v: %w", s.ID, err, errdefs.ErrInvalid)
		}
		out[s.ID] = v
	}
	return out, nil
}

func readSecretFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxSecretSize {
		return "", fmt.Errorf("file %s is larger than %s", p, units.Bytes(maxSecretSize))
	}
	return string(b), nil
}

// contextArchive is a build context packed as a gzip'd tar in a temp file.
type contextArchive struct {
	path       string
	size       int64
	sha256     string // hex, of the file's bytes
	dockerfile string // the Dockerfile's path in the archive
}

func (a *contextArchive) Close() error { return os.Remove(a.path) }

// archiveEntry is one file of the context to pack.
type archiveEntry struct {
	name   string // slash path in the archive, no trailing slash
	source string // absolute path on disk; "" for a directory made up here
	follow bool   // read through a symlink (the Dockerfile)
}

// packContext packs dir into a gzip'd tar, honouring .dockerignore (or
// <Dockerfile>.dockerignore next to the Dockerfile, as buildx): regular
// files, directories and symlinks, in sorted order, owned by 0:0, with
// mtimes in whole seconds, so the same tree packs to the same bytes.
// The Dockerfile and the ignore file are always included. A Dockerfile
// outside dir is added as .kiln/Dockerfile. Other file types are skipped
// with a warning.
func packContext(dir, dockerfile string, warn func(string)) (_ *contextArchive, retErr error) {
	ignore, err := readDockerignore(dir, dockerfile)
	if err != nil {
		return nil, err
	}
	w := &contextWalk{dir: dir, ignore: ignore, forced: map[string]bool{}, warn: warn}
	archive := &contextArchive{dockerfile: outsideDockerfile}
	if rel, ok := insideDir(dir, ignore.path); ok {
		w.forced[rel] = true
	}
	if rel, ok := insideDir(dir, dockerfile); ok {
		w.forced[rel] = true
		w.dockerfile = rel
		archive.dockerfile = rel
	}

	tmp, err := os.CreateTemp("", "kiln-context-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("create the context archive: %w", err)
	}
	archive.path = tmp.Name()
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(archive.path)
		}
	}()
	w.skip = tmp.Name() // skipped if the context holds it
	if p, err := filepath.EvalSymlinks(tmp.Name()); err == nil {
		w.skip = p
	}

	entries, err := w.walk()
	if err != nil {
		return nil, err
	}
	if w.dockerfile == "" {
		entries[outsideDockerfile] = archiveEntry{name: outsideDockerfile, source: dockerfile, follow: true}
	}
	addParentDirs(dir, entries)
	if archive.size, archive.sha256, err = writeContextArchive(tmp, entries); err != nil {
		return nil, err
	}
	return archive, nil
}

// dockerignore is the ignore file of a context and its patterns.
type dockerignore struct {
	path string
	pm   *patternmatcher.PatternMatcher
}

// readDockerignore reads <Dockerfile>.dockerignore, or else the context's
// .dockerignore; neither is no patterns.
func readDockerignore(dir, dockerfile string) (dockerignore, error) {
	ig := dockerignore{path: dockerfile + ".dockerignore"}
	if _, err := os.Stat(ig.path); err != nil {
		ig.path = filepath.Join(dir, ".dockerignore")
	}
	var patterns []string
	if f, err := os.Open(ig.path); err == nil {
		patterns, err = ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return ig, fmt.Errorf("read %s: %w", ig.path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return ig, fmt.Errorf("read %s: %w", ig.path, err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return ig, fmt.Errorf("%s: %v: %w", ig.path, err, errdefs.ErrInvalid)
	}
	ig.pm = pm
	return ig, nil
}

// contextWalk collects the files of a context to pack.
type contextWalk struct {
	dir    string
	ignore dockerignore
	forced map[string]bool // slash paths always packed: the Dockerfile and the ignore file
	// dockerfile is the Dockerfile's slash path in dir; "" when it is
	// outside (and packed as outsideDockerfile).
	dockerfile string
	skip       string // the archive being written, if it is inside dir
	warn       func(string)
}

// walk returns the entries to pack by name: what the ignore file keeps,
// of the kinds a context can hold.
func (w *contextWalk) walk() (map[string]archiveEntry, error) {
	entries := map[string]archiveEntry{}
	matches := map[string]patternmatcher.MatchInfo{}
	err := filepath.WalkDir(w.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read the build context: %w", err)
		}
		if p == w.dir || p == w.skip {
			return nil
		}
		rel, _ := filepath.Rel(w.dir, p)
		rel = filepath.ToSlash(rel)
		ignored, info, err := w.ignore.pm.MatchesUsingParentResults(rel, matches[path.Dir(rel)])
		if err != nil {
			return fmt.Errorf("%s: %v: %w", w.ignore.path, err, errdefs.ErrInvalid)
		}
		if d.IsDir() {
			matches[rel] = info
		}
		if ignored && !w.forced[rel] {
			// A directory is still walked when a "!" pattern or a forced
			// file may bring back something inside it.
			if d.IsDir() && !w.ignore.pm.Exclusions() && !holdsForced(rel, w.forced) {
				return filepath.SkipDir
			}
			return nil
		}
		if w.dockerfile == "" && rel == outsideDockerfile {
			w.warn(fmt.Sprintf("%s in the build context is replaced by the -f Dockerfile", outsideDockerfile))
			return nil
		}
		switch t := d.Type(); {
		case t.IsDir(), t.IsRegular(), t&fs.ModeSymlink != 0:
		default:
			w.warn(fmt.Sprintf("skipping %s: a %s cannot be sent in a build context", rel, fileKind(t)))
			return nil
		}
		entries[rel] = archiveEntry{name: rel, source: p, follow: w.forced[rel] && rel == w.dockerfile}
		return nil
	})
	return entries, err
}

// addParentDirs adds every entry's parent directories, even ignored ones
// that a "!" pattern or a forced file reached through.
func addParentDirs(dir string, entries map[string]archiveEntry) {
	for name := range entries {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; ok {
				continue
			}
			src := filepath.Join(dir, filepath.FromSlash(d))
			if _, err := os.Lstat(src); err != nil {
				src = "" // .kiln, made up for an outside Dockerfile
			}
			entries[d] = archiveEntry{name: d, source: src}
		}
	}
}

// writeContextArchive writes entries, sorted by name, as a gzip'd tar to
// f and closes it; it returns the archive's size and sha256 (hex).
func writeContextArchive(f *os.File, entries map[string]archiveEntry) (size int64, sha string, _ error) {
	names := slices.Sorted(maps.Keys(entries)) // a parent sorts before its children
	hash := sha256.New()
	count := &countingWriter{}
	gz := gzip.NewWriter(io.MultiWriter(f, hash, count))
	tw := tar.NewWriter(gz)
	for _, name := range names {
		if err := writeArchiveEntry(tw, entries[name]); err != nil {
			return 0, "", err
		}
	}
	for _, c := range []io.Closer{tw, gz, f} {
		if err := c.Close(); err != nil {
			return 0, "", fmt.Errorf("write the context archive: %w", err)
		}
	}
	return count.n, hex.EncodeToString(hash.Sum(nil)), nil
}

// writeArchiveEntry writes one entry's header and content.
func writeArchiveEntry(tw *tar.Writer, e archiveEntry) error {
	if e.source == "" {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: e.name + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}
		if err := checkContextEntry(hdr, e); err != nil {
			return err
		}
		return tw.WriteHeader(hdr)
	}
	stat := os.Lstat
	if e.follow {
		stat = os.Stat
	}
	fi, err := stat(e.source)
	if err != nil {
		return fmt.Errorf("read the build context: %w", err)
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(e.source); err != nil {
			return fmt.Errorf("read the build context: %w", err)
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("context entry %s: %w", e.name, err)
	}
	hdr.Name = e.name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	// Permission bits only: kiln refuses setuid, setgid and sticky bits in
	// uploads, and a setgid directory (shared group folders) is common.
	hdr.Mode &= 0o777
	hdr.ModTime = fi.ModTime().Truncate(time.Second)
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	hdr.Format = tar.FormatUnknown
	if err := checkContextEntry(hdr, e); err != nil {
		return err
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("context entry %s: %w", e.name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(e.source)
	if err != nil {
		return fmt.Errorf("read the build context: %w (add the file to .dockerignore to leave it out)", err)
	}
	defer f.Close()
	n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
	if err != nil {
		return fmt.Errorf("read the build context: %s: %w", e.name, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("build context file %s shrank while it was packed; try again: %w", e.name, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// checkContextEntry checks an entry with the rules kiln's server extracts
// the upload with (archive.CheckHeader), so that a context it would refuse
// fails here, before the upload, naming the file.
func checkContextEntry(hdr *tar.Header, e archiveEntry) error {
	if _, err := archive.CheckHeader(hdr, archive.Limits{}, archive.Policy{RejectSpecialBits: true}); err != nil {
		where := e.source
		if where == "" {
			where = e.name
		}
		return fmt.Errorf("build context file %s: kiln would refuse it: %w", where, err)
	}
	return nil
}

// insideDir returns p relative to dir as a slash path, and whether p is
// inside dir.
func insideDir(dir, p string) (string, bool) {
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", false
	}
	return filepath.ToSlash(rel), true
}

// holdsForced reports whether directory rel contains a forced path.
func holdsForced(rel string, forced map[string]bool) bool {
	for f := range forced {
		if strings.HasPrefix(f, rel+"/") {
			return true
		}
	}
	return false
}

func fileKind(t fs.FileMode) string {
	switch {
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return len(b), nil
}

// putArchive PUTs the archive to the upload URL with the headers the
// server asked for (client.PutContext), showing progress.
func putArchive(ctx context.Context, uploadURL string, headers map[string]string, a *contextArchive, progress *uploadProgress) error {
	f, err := os.Open(a.path)
	if err != nil {
		return fmt.Errorf("upload the context: %w", err)
	}
	defer f.Close()
	err = client.PutContext(ctx, client.Upload{URL: uploadURL, Headers: headers, Body: f, Size: a.size,
		Wrap: progress.Reader, Failed: progress.Abort})
	if err == nil {
		progress.Done()
	}
	return err
}
