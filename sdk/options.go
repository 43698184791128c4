package sdk

import (
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/platform"
)

// An Option configures a [Builder]. Options are applied in order by
// [NewBuilder]; an option given a value that can never work (an empty
// secret id, an unknown platform) makes NewBuilder fail, before anything
// talks to a server.
type Option interface {
	apply(*settings) error
}

type optionFunc func(*settings) error

func (f optionFunc) apply(s *settings) error { return f(s) }

// settings is everything the options say. req is the build itself;
// the rest is how and where to run it.
type settings struct {
	req      buildreq.Request
	sshKeys  map[string][]byte // id → private key (PEM)
	tags     []string          // extra tags in kiln's registry
	uploaded string            // WithUploadedContext's key
	contexts int               // how many context options were given

	apiURL, token string
	project       string
	progress      func(Event)
	wait          time.Duration
}

// maxTags matches the server's limit on saved tags.
const maxTags = 20

// WithContextDir builds the directory dir: it is sent to the builder
// incrementally, honouring its .dockerignore, as `kiln build DIR` sends it.
// A relative dir is relative to the working directory. Give exactly one of
// WithContextDir, [WithContextTar], [WithGitContext] and [WithUploadedContext].
func WithContextDir(dir string) Option {
	return optionFunc(func(s *settings) error {
		if dir == "" {
			return invalidf("WithContextDir: empty directory")
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return invalidf("WithContextDir %q: %v", dir, err)
		}
		s.contexts++
		s.req.Context = buildreq.Context{Dir: abs}
		return nil
	})
}

// WithContextTar builds the tar archive r (plain, gzip or bzip2
// compressed), as `kiln build -` reads one from stdin. r is read once, by
// [Builder.Execute], and is extracted safely (no paths outside the
// archive's root, bounded size) before the build.
func WithContextTar(r io.Reader) Option {
	return optionFunc(func(s *settings) error {
		if r == nil {
			return invalidf("WithContextTar: nil reader")
		}
		s.contexts++
		s.req.Context = buildreq.Context{Tar: r}
		return nil
	})
}

// WithGitContext builds a git repository the project's builder fetches
// itself, as `kiln build URL` does: "https://host/org/repo.git#ref:subdir"
// (ref: a branch, a tag or a full commit SHA). Nothing of the source
// passes through this process. A private repository's token is a secret:
// WithSecret("GIT_AUTH_TOKEN", token) (or GIT_AUTH_TOKEN.<host>,
// GIT_AUTH_HEADER.<host>). The build is pinned to the commit the ref names
// when it starts. See docs/git-contexts.md.
func WithGitContext(url string) Option {
	return optionFunc(func(s *settings) error {
		if _, err := buildreq.ParseGitURL(url); err != nil {
			return invalidf("WithGitContext: %v", err)
		}
		s.contexts++
		s.req.Context = buildreq.Context{Git: url}
		return nil
	})
}

// WithUploadedContext builds a context already uploaded to kiln (see
// [UploadContext], or kiln's upload API: GenerateUploadURL), named by the
// key the upload returned. kiln runs such a build itself, on the server:
// SSH keys and a registry cache cannot be used with it, and the image is
// pushed to the Builder's reference from this process after the build.
func WithUploadedContext(key string) Option {
	return optionFunc(func(s *settings) error {
		if strings.TrimSpace(key) == "" {
			return invalidf("WithUploadedContext: empty context key")
		}
		s.contexts++
		s.uploaded = key
		return nil
	})
}

// WithDockerfile names the Dockerfile, as a path inside the context
// ("build/Dockerfile"); the default is "Dockerfile" at the context's root.
// With a directory context an absolute path may name a Dockerfile outside
// it.
func WithDockerfile(path string) Option {
	return optionFunc(func(s *settings) error {
		if path == "" {
			return invalidf("WithDockerfile: empty path")
		}
		s.req.Dockerfile = buildreq.Dockerfile{Path: path}
		return nil
	})
}

// WithTarget builds the stage named stage instead of the last one.
func WithTarget(stage string) Option {
	return optionFunc(func(s *settings) error {
		if stage == "" || strings.ContainsAny(stage, " \t\r\n,=\"") {
			return invalidf("WithTarget %q: not a stage name", stage)
		}
		s.req.Target = stage
		return nil
	})
}

// WithBuildArg sets the build argument key (ARG key) to value. Later
// values of the same key win.
func WithBuildArg(key, value string) Option {
	return optionFunc(func(s *settings) error {
		if key == "" || strings.ContainsAny(key, "= \t\r\n") {
			return invalidf("WithBuildArg %q: not a build argument name", key)
		}
		if s.req.Args == nil {
			s.req.Args = map[string]string{}
		}
		s.req.Args[key] = value
		return nil
	})
}

// WithBuildArgs sets several build arguments (see [WithBuildArg]).
func WithBuildArgs(args map[string]string) Option {
	return optionFunc(func(s *settings) error {
		for k, v := range args {
			if err := WithBuildArg(k, v).apply(s); err != nil {
				return err
			}
		}
		return nil
	})
}

// WithSecret exposes value to RUN --mount=type=secret,id=id. The value
// never enters the image or its cache. For a directory or tar context it
// is written to a file only this user can read, for the duration of
// [Builder.Execute]; for an uploaded context it is sent to kiln, which
// keeps it sealed until the build ends.
func WithSecret(id, value string) Option {
	return optionFunc(func(s *settings) error {
		if err := checkID("WithSecret", id); err != nil {
			return err
		}
		for _, sec := range s.req.Secrets {
			if sec.ID == id {
				return invalidf("WithSecret %q: given twice", id)
			}
		}
		s.req.Secrets = append(s.req.Secrets, buildreq.Secret{ID: id, Value: []byte(value)})
		return nil
	})
}

// WithSSHKey exposes a private key (PEM) to RUN --mount=type=ssh,id=id
// ("default" for a plain --mount=type=ssh). The key is written to a file
// only this user can read for the duration of [Builder.Execute] and
// removed after; it is served to the build by an SSH agent in this
// process and never reaches the image. Not available with
// [WithUploadedContext].
func WithSSHKey(id string, privateKeyPEM []byte) Option {
	return optionFunc(func(s *settings) error {
		if err := checkID("WithSSHKey", id); err != nil {
			return err
		}
		if b, _ := pem.Decode(privateKeyPEM); b == nil {
			return invalidf("WithSSHKey %q: the key is not PEM", id)
		}
		if _, dup := s.sshKeys[id]; dup {
			return invalidf("WithSSHKey %q: given twice", id)
		}
		if s.sshKeys == nil {
			s.sshKeys = map[string][]byte{}
		}
		s.sshKeys[id] = privateKeyPEM
		return nil
	})
}

// WithTags also saves the image in kiln's registry under each tag, in the
// project's repository (<registry>/<project>:<tag>), like `kiln build
// --save-tag`. The image is always saved under its build id.
func WithTags(tags ...string) Option {
	return optionFunc(func(s *settings) error {
		for _, t := range tags {
			if err := client.CheckTag(t); err != nil {
				return invalidf("WithTags: %v", err)
			}
		}
		s.tags = append(s.tags, tags...)
		if len(s.tags) > maxTags {
			return invalidf("WithTags: %d tags; at most %d", len(s.tags), maxTags)
		}
		return nil
	})
}

// WithRegistryCache imports the build cache from ref and exports every
// layer of the build to it (type=registry,mode=max), for builds on other
// kiln servers or other projects to reuse. The project's own cache on its
// builder needs nothing. Not available with [WithUploadedContext].
func WithRegistryCache(ref name.Reference) Option {
	return optionFunc(func(s *settings) error {
		if ref == nil {
			return invalidf("WithRegistryCache: nil reference")
		}
		attrs := map[string]string{"ref": ref.String()}
		s.req.CacheFrom = append(s.req.CacheFrom, buildreq.Cache{Type: "registry", Attrs: attrs})
		s.req.CacheTo = append(s.req.CacheTo, buildreq.Cache{Type: "registry", Attrs: map[string]string{"ref": ref.String(), "mode": "max"}})
		return nil
	})
}

// WithPlatforms builds for these platforms ("linux/amd64", "linux/arm64",
// "arm64"), into one image index; by default the build targets the
// platform of the project's amd64 builder. Each platform builds on the
// builder of its architecture.
func WithPlatforms(platforms ...string) Option {
	return optionFunc(func(s *settings) error {
		ps, err := platform.ParseTargets(platforms)
		if err != nil {
			return fmt.Errorf("WithPlatforms: %w", err)
		}
		s.req.Platforms = ps
		return nil
	})
}

// WithNoCache builds every step again, without the project's cache.
func WithNoCache() Option {
	return optionFunc(func(s *settings) error {
		s.req.NoCache = true
		return nil
	})
}

// WithServer names the kiln server (its API URL, e.g.
// "https://kiln.example.com") and the token to use. Without it, the server
// and token are found where the kiln CLI finds them: the environment
// (KILN_API_URL and KILN_TOKEN, or DEPOT_API_URL and DEPOT_TOKEN), then
// the file `kiln login` writes.
func WithServer(apiURL, token string) Option {
	return optionFunc(func(s *settings) error {
		u, err := url.Parse(apiURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalidf("WithServer: %q is not an http(s) URL", apiURL)
		}
		if strings.TrimSpace(token) == "" {
			return invalidf("WithServer: empty token")
		}
		s.apiURL, s.token = strings.TrimSuffix(apiURL, "/"), token
		return nil
	})
}

// WithProject builds in project id. Without it, the project is found as
// the kiln CLI finds it: KILN_PROJECT_ID (or DEPOT_PROJECT_ID), then a
// kiln.json (or depot.json) with {"id": "..."} in the context directory or
// one above it (the working directory, for other contexts).
func WithProject(id string) Option {
	return optionFunc(func(s *settings) error {
		if strings.TrimSpace(id) == "" {
			return invalidf("WithProject: empty project id")
		}
		s.project = id
		return nil
	})
}

// WithProgress calls fn with the build's progress: each step as it
// starts and ends, and what its commands print. fn is called from one
// goroutine at a time, in order, while [Builder.Execute] runs; it should
// return quickly (the build's status stream waits for it).
func WithProgress(fn func(Event)) Option {
	return optionFunc(func(s *settings) error {
		s.progress = fn
		return nil
	})
}

// WithBuilderWait bounds how long Execute waits for the project's builder
// to start (default 3 minutes). It does not apply to an uploaded context,
// whose build kiln queues and starts itself.
func WithBuilderWait(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if d <= 0 {
			return invalidf("WithBuilderWait: %s is not a positive duration", d)
		}
		s.wait = d
		return nil
	})
}

// checkID validates a secret or SSH id.
func checkID(opt, id string) error {
	if id == "" {
		return invalidf("%s: empty id", opt)
	}
	if strings.ContainsAny(id, ",=\"' \t\r\n") {
		return invalidf("%s %q: an id holds no commas, quotes, '=' or spaces", opt, id)
	}
	return nil
}

// check validates what only all the options together say.
func (s *settings) check() error {
	switch {
	case s.contexts == 0:
		return invalidf("no build context: give WithContextDir, WithContextTar, WithGitContext or WithUploadedContext")
	case s.contexts > 1:
		return invalidf("%d build contexts: give one of WithContextDir, WithContextTar, WithGitContext and WithUploadedContext", s.contexts)
	}
	if p := s.req.Dockerfile.Path; p != "" && filepath.IsAbs(p) && s.req.Context.Dir == "" {
		return invalidf("WithDockerfile %q: with an archive or an uploaded context, the Dockerfile is a path inside it", p)
	}
	if s.uploaded != "" {
		switch {
		case len(s.sshKeys) > 0:
			return invalidf("WithSSHKey cannot be used with WithUploadedContext: kiln runs the build on the server, out of reach of this process's keys")
		case len(s.req.CacheFrom) > 0:
			return invalidf("WithRegistryCache cannot be used with WithUploadedContext: a server build uses the project's persistent cache")
		}
	}
	return nil
}
