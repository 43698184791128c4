package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerui"
	gateway "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/solver/pb"
	"github.com/moby/buildkit/util/gitutil"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// A git context is fetched by the builder, with BuildKit's git source: the
// Dockerfile frontend takes the URL as its "context" attribute (as buildx
// passes it) and reads the Dockerfile from the same checkout, so nothing
// of the source passes through the client. Before the build, kiln asks the
// builder which commit the ref names (the gateway's ResolveSourceMetadata,
// the same call the frontend makes for SOURCE_DATE_EPOCH) and pins the
// build to it (the URL's checksum= query, which BuildKit's git source
// checks): the commit kiln records is the commit that was built, even if
// the branch moves meanwhile.
type gitContext struct {
	url    string // as given
	parsed buildreq.GitURL
	commit string // resolved, once ResolveGitCommit ran
}

// prepareGitContext sets the frontend attributes of a git context.
// BUILDKIT_CONTEXT_KEEP_GIT_DIR and the other build arguments reach the
// frontend as they are (setFrontendOptions).
func (r *Request) prepareGitContext(raw string, df buildreq.Dockerfile) error {
	g, err := buildreq.ParseGitURL(raw)
	if err != nil {
		return errdefs.InvalidWrapf(err, "build context")
	}
	r.git = gitContext{url: raw, parsed: g}
	r.frontendAttrs[dockerui.DefaultLocalNameContext] = raw
	switch {
	case df.Inline != nil:
		// -f -: the Dockerfile is sent, the context fetched.
		if err := r.dockerfileFromReader(strings.NewReader(string(df.Inline)), "-f \"-\""); err != nil {
			return err
		}
		r.locals[mountDockerfile] = filepath.Dir(r.dockerfilePath)
		r.frontendAttrs["dockerfilekey"] = mountDockerfile
		r.frontendAttrs["filename"] = "Dockerfile"
	case df.Path != "":
		r.frontendAttrs["filename"] = df.Path
	}
	return nil
}

// GitContext is the git URL the build context is fetched from; "" for a
// local context.
func (r *Request) GitContext() string { return r.git.url }

// GitCommit is the commit the build was pinned to by [ResolveGitCommit];
// "" before, or for a local context.
func (r *Request) GitCommit() string { return r.git.commit }

// ResolveGitCommit asks the builder c which commit the git context's ref
// names (fetching with the build's secrets, so GIT_AUTH_TOKEN.<host> and
// GIT_AUTH_HEADER.<host> apply) and pins the request to it. It does
// nothing for a local context. A ref the repository does not have and a
// refused fetch are errors that say so.
func (r *Request) ResolveGitCommit(ctx context.Context, c *client.Client) (string, error) {
	if r.git.url == "" || r.git.commit != "" {
		return r.git.commit, nil
	}
	st, ok, err := dockerui.DetectGitContext(r.git.url, nil)
	if !ok || err != nil {
		return "", errdefs.Invalidf("build context %q: not a git URL BuildKit reads: %v", r.git.url, err)
	}
	op, err := gitSourceOp(ctx, st)
	if err != nil {
		return "", err
	}
	opt, err := r.sessionSolveOpt(io.Discard)
	if err != nil {
		return "", err
	}
	opt.Frontend, opt.FrontendAttrs, opt.CacheImports, opt.CacheExports = "", nil, nil, nil
	var md *sourceresolver.MetaResponse
	_, err = c.Build(ctx, opt, "kiln", func(ctx context.Context, gc gateway.Client) (*gateway.Result, error) {
		var err error
		md, err = gc.ResolveSourceMetadata(ctx, op, sourceresolver.Opt{
			LogName: "[kiln] resolve git ref of " + r.git.parsed.Remote,
			GitOpt:  &sourceresolver.ResolveGitOpt{ReturnObject: true},
		})
		if err != nil {
			return nil, err
		}
		return gateway.NewResult(), nil
	}, nil)
	if err != nil {
		return "", r.gitError(err)
	}
	if md == nil || md.Git == nil || md.Git.Checksum == "" {
		return "", fmt.Errorf("build context %s: the builder resolved no commit for ref %q; check that the repository has it, or give a full commit SHA (URL#<sha>)", r.git.parsed.Remote, r.refName())
	}
	commit := md.Git.Checksum
	if md.Git.CommitChecksum != "" {
		commit = md.Git.CommitChecksum // an annotated tag: the commit it points to
	}
	r.git.commit = commit
	r.frontendAttrs[dockerui.DefaultLocalNameContext] = pinGitURL(r.git.url, md.Git.Checksum)
	return commit, nil
}

// gitSourceOp is the source op of a git state.
func gitSourceOp(ctx context.Context, st *llb.State) (*pb.SourceOp, error) {
	def, err := st.Marshal(ctx)
	if err != nil {
		return nil, err
	}
	for _, dt := range def.ToPB().Def {
		var op pb.Op
		if err := op.Unmarshal(dt); err != nil {
			return nil, err
		}
		if src := op.GetSource(); src != nil {
			return src, nil
		}
	}
	return nil, errors.New("git context: no source op (internal error)")
}

// pinGitURL adds checksum=<sha> to a URL-style git context, so BuildKit
// builds that commit or fails; scp-style (git@host:path) contexts take no
// query and are left as they are.
func pinGitURL(raw, sha string) string {
	if !strings.Contains(raw, "://") {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	q := u.Query()
	if q.Get("checksum") != "" || q.Get("commit") != "" {
		return raw
	}
	q.Set("checksum", sha)
	u.RawQuery = q.Encode()
	return u.String()
}

func (r *Request) refName() string {
	if r.git.parsed.Ref == "" {
		return "HEAD (the default branch)"
	}
	return r.git.parsed.Ref
}

// gitError says what a failed resolve means: the ref is missing, the
// repository refused the credentials (or asked for some), or it is not
// reachable from the builder.
func (r *Request) gitError(err error) error {
	msg := err.Error()
	remote := r.git.parsed.Remote
	example := "e.g. --secret id=" + buildreq.GitAuthToken + ",env=GIT_TOKEN"
	if r.serverSide {
		example = "in CreateBuild's secrets"
	}
	secrets := fmt.Sprintf("give a token as the build secret %s.%s or %s (%s), or a full header as %s.%s",
		buildreq.GitAuthToken, r.git.parsed.Host, buildreq.GitAuthToken, example, buildreq.GitAuthHeader, r.git.parsed.Host)
	switch {
	case strings.Contains(msg, fmt.Sprintf("response %d", buildreq.FetchRefusedStatus)), strings.Contains(msg, fmt.Sprintf("returned error: %d", buildreq.FetchRefusedStatus)):
		// The builder's fetch proxy refused the address (builder/fetchproxy.go).
		return fmt.Errorf("git context %s: the builder may not reach %s: it resolves to a private address (loopback, private, link-local or the kiln server's own); "+
			"ask the operator to open the range with `kiln projects update PROJECT --egress-allow CIDR` (loopback never): %w", remote, r.git.parsed.Host, errdefs.ErrPermission)
	case strings.Contains(msg, "does not contain ref"):
		return errdefs.Invalidf("git context %s: ref %q not found (no such branch, tag or commit)", remote, r.refName())
	case strings.Contains(msg, "could not read Username"), strings.Contains(msg, "terminal prompts disabled"),
		strings.Contains(msg, "Authentication failed"), strings.Contains(msg, "returned error: 401"), strings.Contains(msg, "returned error: 403"):
		// git asks for a user name whether it sent a header or not: what
		// was given says which it is.
		if id := r.gitCredential(); id != "" {
			return fmt.Errorf("git context %s: the repository refused the credentials given (build secret %s): %w", remote, id, errdefs.ErrPermission)
		}
		return fmt.Errorf("git context %s: the repository needs credentials; %s: %w", remote, secrets, errdefs.ErrPermission)
	case errors.Is(err, gitutil.ErrInvalidProtocol):
		return errdefs.InvalidWrapf(err, "git context %s", remote)
	}
	return fmt.Errorf("git context %s: fetching ref %q on the builder: %w", remote, r.refName(), err)
}

// gitCredential is the id of the build secret BuildKit's git source would
// send to the context's host, or "".
func (r *Request) gitCredential() string {
	host := r.git.parsed.Host
	candidates := []string{buildreq.GitAuthHeader + "." + host, buildreq.GitAuthToken + "." + host, buildreq.GitAuthHeader, buildreq.GitAuthToken}
	for _, id := range candidates {
		if _, ok := r.secretValues[id]; ok {
			return id
		}
		for _, s := range r.secrets {
			if s.ID == id {
				return id
			}
		}
	}
	return ""
}
