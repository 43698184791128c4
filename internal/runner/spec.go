package runner

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/distribution/reference"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// Spec is what a source build builds, as stored with the build (JSON) so
// a restarted server, a rebuild and GetBuild all see the same request.
// Secrets are not here: they are sealed apart (seal.go).
type Spec struct {
	ContextKey string `json:"context_key"`
	// GitURL is a git context (instead of ContextKey) the builder fetches:
	// URL#ref:subdir (buildreq/git.go).
	GitURL     string            `json:"git_url,omitempty"`
	Dockerfile string            `json:"dockerfile"`
	Target     string            `json:"target,omitempty"`
	BuildArgs  map[string]string `json:"build_args,omitempty"`
	// Tags as requested; the references they become are computed when the
	// build runs (refs), against the registry host of that moment.
	Tags      []string `json:"tags,omitempty"`
	Platforms []string `json:"platforms"`
	NoCache   bool     `json:"no_cache,omitempty"`
	// SecretIDs names the secrets the build was given (never their values).
	SecretIDs []string `json:"secret_ids,omitempty"`
	RebuildOf string   `json:"rebuild_of,omitempty"`
}

// Limits on a CreateBuild request.
const (
	maxTags         = 20
	maxBuildArgs    = 200
	maxArgBytes     = 64 << 10
	maxSecrets      = 50
	maxSecretBytes  = 512 << 10
	maxAllSecrets   = 2 << 20
	maxDockerfile   = 1024
	maxTargetLength = 128
)

var (
	argNameRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,254}$`)
	secretIDRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
	targetRe   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	tagRe      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// normalize checks a request's fields and fills defaults. Every error
// names the field and the value.
func (s *Spec) normalize(secrets map[string]string) error {
	switch {
	case s.ContextKey != "" && s.GitURL != "":
		return invalid("give context_key (an upload) or git_url, not both")
	case s.GitURL != "":
		if _, err := buildreq.ParseGitURL(s.GitURL); err != nil {
			return invalid("git_url: %v", err)
		}
		if strings.HasPrefix(s.GitURL, "ssh://") || strings.HasPrefix(s.GitURL, "git@") {
			return invalid("git_url %q: an ssh URL needs an SSH agent, which source builds do not have; use https:// with the secret GIT_AUTH_TOKEN", clip(s.GitURL, 140))
		}
	case s.ContextKey == "":
		return invalid("context_key is required: upload the context first (GenerateUploadURL), or give git_url for a git context")
	}
	if s.Dockerfile == "" {
		s.Dockerfile = "Dockerfile"
	}
	df := s.Dockerfile
	if len(df) > maxDockerfile || !utf8.ValidString(df) || strings.ContainsRune(df, 0) {
		return invalid("dockerfile %q: not a valid path", clip(df, 80))
	}
	if path.IsAbs(df) {
		return invalid("dockerfile %q: give a path inside the context, like \"Dockerfile\" or \"docker/app.Dockerfile\"", clip(df, 80))
	}
	clean := path.Clean(df)
	if clean == "." || clean == ".." || strings.HasPrefix(clean, "../") {
		return invalid("dockerfile %q: the path leaves the context", clip(df, 80))
	}
	s.Dockerfile = clean
	if s.Target != "" && (len(s.Target) > maxTargetLength || !targetRe.MatchString(s.Target)) {
		return invalid("target %q: not a valid stage name", clip(s.Target, 80))
	}
	if len(s.BuildArgs) > maxBuildArgs {
		return invalid("%d build args; at most %d", len(s.BuildArgs), maxBuildArgs)
	}
	size := 0
	for k, v := range s.BuildArgs {
		if !argNameRe.MatchString(k) {
			return invalid("build arg %q: names are letters, digits and _ and don't start with a digit", clip(k, 80))
		}
		size += len(k) + len(v)
	}
	if size > maxArgBytes {
		return invalid("build args are %d bytes; at most %d", size, maxArgBytes)
	}
	if len(s.Tags) > maxTags {
		return invalid("%d tags; at most %d", len(s.Tags), maxTags)
	}
	if len(s.Platforms) == 0 {
		s.Platforms = []string{"linux/amd64"}
	}
	var platforms []string
	for _, p := range s.Platforms {
		np, err := platform.ParseBuilder(p)
		if err != nil {
			return err
		}
		if !slices.Contains(platforms, np.String()) {
			platforms = append(platforms, np.String())
		}
	}
	s.Platforms = platforms
	if len(secrets) > maxSecrets {
		return invalid("%d secrets; at most %d", len(secrets), maxSecrets)
	}
	total := 0
	s.SecretIDs = nil
	for id, v := range secrets {
		if !secretIDRe.MatchString(id) {
			return invalid("secret id %q: letters, digits, '_', '.' and '-' only", clip(id, 80))
		}
		if len(v) > maxSecretBytes {
			return invalid("secret %q is %d bytes; at most %d", id, len(v), maxSecretBytes)
		}
		total += len(v)
		s.SecretIDs = append(s.SecretIDs, id)
	}
	if total > maxAllSecrets {
		return invalid("secrets are %d bytes in all; at most %d", total, maxAllSecrets)
	}
	sort.Strings(s.SecretIDs)
	return nil
}

// request is the build the spec asks for, from the context unpacked at
// root and the Dockerfile resolved in it; secrets are the unsealed values.
// Where the image goes is the runner's to add (Request.AddSave).
//
// For a git context, root is "" and dockerfile the path in the
// repository's context directory: the builder reads both.
func (s Spec) request(root, dockerfile string, secrets map[string][]byte) (buildreq.Request, error) {
	platforms, err := platform.ParseTargets(s.Platforms)
	if err != nil {
		return buildreq.Request{}, err
	}
	c := buildreq.Context{Dir: root}
	if s.GitURL != "" {
		c = buildreq.Context{Git: s.GitURL}
	}
	req := buildreq.Request{
		Context:    c,
		Dockerfile: buildreq.Dockerfile{Path: dockerfile},
		Target:     s.Target,
		Args:       maps.Clone(s.BuildArgs),
		NoCache:    s.NoCache,
		Platforms:  platforms,
	}
	for _, id := range slices.Sorted(maps.Keys(secrets)) {
		v := secrets[id]
		if v == nil {
			v = []byte{} // an empty secret is still a value
		}
		req.Secrets = append(req.Secrets, buildreq.Secret{ID: id, Value: v})
	}
	return req, nil
}

func (s Spec) encode() string {
	b, _ := json.Marshal(s)
	return string(b)
}

func decodeSpec(v string) (Spec, error) {
	var s Spec
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return Spec{}, fmt.Errorf("build spec is unreadable: %w", err)
	}
	return s, nil
}

// refs turns a build's tags into the references its image is pushed to:
// the build's own reference first (<registry>/<project>:<build id>), then
//
//   - "v1" → <registry>/<project>:v1
//   - "app:v1" or "org/app" → <registry>/<project>/app:v1 (or
//     <project>/org/app:latest); a bare "app" is a tag, like "v1"
//   - a full reference on kiln's registry, inside the project's namespace
//   - a full reference on a registry the operator gave credentials for.
//
// Anything else is refused, so a build cannot push into another project or
// to a registry kiln has no credentials for.
func refs(registryHost, projectID, buildID string, tags []string, pushHosts []string) ([]string, error) {
	if registryHost == "" {
		return nil, fmt.Errorf("this kiln server has no registry to push source builds to: %w", errdefs.ErrFailedPrecondition)
	}
	own := registryHost + "/" + projectID
	out := []string{own + ":" + buildID}
	add := func(r string) {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	for _, t := range tags {
		if tagRe.MatchString(t) {
			add(own + ":" + t)
			continue
		}
		named, err := reference.ParseNormalizedNamed(t)
		if err != nil {
			return nil, invalid("tag %q: not a tag or an image reference", clip(t, 140))
		}
		if _, ok := named.(reference.Digested); ok {
			return nil, invalid("tag %q: a pushed image is named by tag, not by digest", clip(t, 140))
		}
		named = reference.TagNameOnly(named)
		host := reference.Domain(named)
		explicit := strings.HasPrefix(t, host+"/")
		switch {
		case !explicit:
			// "app:v1": a repository inside the project's namespace.
			repo := reference.Path(named)
			repo = strings.TrimPrefix(repo, "library/")
			add(own + "/" + repo + ":" + named.(reference.Tagged).Tag())
		case host == registryHost:
			p := reference.Path(named)
			if p != projectID && !strings.HasPrefix(p, projectID+"/") {
				return nil, invalid("tag %q: this build may push only to repositories of its project (%s/…)", clip(t, 140), own)
			}
			add(named.String())
		case slices.Contains(pushHosts, host):
			add(named.String())
		default:
			return nil, invalid("tag %q: kiln has no credentials for registry %s; push to kiln's registry or ask the operator to add %s to --push-auth-file", clip(t, 140), host, host)
		}
	}
	return out, nil
}
