package buildreq

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/moby/buildkit/frontend/dockerfile/dfgitutil"
)

// Git contexts: the builder fetches the source itself, with BuildKit's git
// source, so no source passes through the client or kiln's server. The
// syntax is BuildKit's (and Docker's): URL[#REF][:SUBDIR], where REF is a
// branch, a tag or a full commit SHA ("" is the remote's default branch)
// and SUBDIR the directory of the repository that is the context.
//
// Credentials for a private repository are build secrets, named as
// BuildKit's git source looks them up: GIT_AUTH_TOKEN.<host> (a token, sent
// as Basic x-access-token:<token>) or GIT_AUTH_HEADER.<host> (a whole
// Authorization header value, e.g. "bearer abc"), falling back to
// GIT_AUTH_TOKEN and GIT_AUTH_HEADER without the host.

// Git credential secret ids, as BuildKit's git source reads them
// (client/llb.GitAuthTokenKey, GitAuthHeaderKey).
const (
	GitAuthToken  = "GIT_AUTH_TOKEN"
	GitAuthHeader = "GIT_AUTH_HEADER"
)

// FetchRefusedStatus is the HTTP status (421, Misdirected Request) with
// which a builder's fetch proxy refuses a destination the project's builds
// may not reach (internal/builder/fetchproxy.go). It shows in git's errors
// ("CONNECT tunnel failed, response 421", "The requested URL returned
// error: 421"), where a client tells it apart from a git server's own 401
// or 403.
const FetchRefusedStatus = 421

// maxGitURL bounds a git context URL.
const maxGitURL = 2048

// GitURL is a parsed git context.
type GitURL struct {
	// Remote is the repository's URL, without ref and subdir.
	Remote string
	// Host is the remote's host (with its port, if any): the suffix of the
	// per-host credential secrets.
	Host string
	// Ref is the branch, tag or commit; "" is the default branch.
	Ref string
	// SubDir is the context's directory in the repository; "" is its root.
	SubDir string
}

// IsGitURL reports whether v names a git context rather than a local
// path: a URL with a scheme kiln treats as remote (https, http, git, ssh),
// or an scp-like git@host:path. Whether it is a valid one is
// [ParseGitURL]'s to say.
// Anything else with "://" (file://, ftp://) is meant as a URL too, and
// refused by ParseGitURL rather than read as a directory.
func IsGitURL(v string) bool { return isRemoteContext(v) || strings.Contains(v, "://") }

// ParseGitURL checks a git context strictly and splits it. Accepted:
// https://, http://, git:// and ssh:// URLs and scp-like git@host:path;
// http(s) URLs must end in .git (before #), as BuildKit requires. Refused,
// with an error naming the problem: other schemes (file://), local paths,
// anything starting with "-" (option injection into git), control
// characters or spaces, credentials inside the URL (use a secret), refs or
// subdirs that leave the repository. Errors are plain; the caller labels
// them.
func ParseGitURL(v string) (GitURL, error) {
	switch {
	case v == "":
		return GitURL{}, errors.New("empty git URL")
	case len(v) > maxGitURL:
		return GitURL{}, fmt.Errorf("git URL is %d bytes; at most %d", len(v), maxGitURL)
	case strings.HasPrefix(v, "-"):
		return GitURL{}, errors.New("a git URL cannot start with \"-\"")
	}
	// What errors quote: never a password, whatever else is wrong.
	shown := clipURL(hideUserinfo(v))
	for _, r := range v {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return GitURL{}, fmt.Errorf("git URL %q contains a space or control character", shown)
		}
	}
	scheme, _, hasScheme := strings.Cut(v, "://")
	switch {
	case hasScheme:
		switch strings.ToLower(scheme) {
		case "https", "http", "git", "ssh":
		default:
			return GitURL{}, fmt.Errorf("git URL %q: scheme %q is not supported (use https, http, git or ssh)", shown, scheme)
		}
	case !strings.HasPrefix(v, "git@"):
		return GitURL{}, fmt.Errorf("%q is not a git URL (want https://host/org/repo.git[#ref][:subdir], ssh://, git:// or git@host:org/repo.git)", shown)
	}
	if hasScheme {
		u, err := url.Parse(v)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // its text would quote the whole URL
			}
			return GitURL{}, fmt.Errorf("git URL %q: %v", shown, err)
		}
		switch {
		case u.Host == "" || strings.HasPrefix(u.Host, "-"):
			return GitURL{}, fmt.Errorf("git URL %q: no host", shown)
		case u.User != nil && u.User.String() != "git":
			if _, hasPassword := u.User.Password(); hasPassword || u.Scheme != "ssh" {
				return GitURL{}, fmt.Errorf("git URL %q: credentials do not belong in the URL; give them as the build secret %s (a token) or %s", shown, GitAuthToken, GitAuthHeader)
			}
		}
	}
	g, isGit, err := dfgitutil.ParseGitRef(v)
	switch {
	case err != nil && isGit:
		return GitURL{}, fmt.Errorf("git URL %q: %v", shown, err)
	case err != nil || !isGit:
		if hasScheme && strings.HasPrefix(strings.ToLower(scheme), "http") {
			return GitURL{}, fmt.Errorf("%q is not a git URL: an http(s) git URL ends in .git (https://host/org/repo.git#ref:subdir); tarball URLs are not supported as a build context", shown)
		}
		return GitURL{}, fmt.Errorf("%q is not a git URL", shown)
	}
	out := GitURL{Remote: g.Remote, Ref: g.Ref, SubDir: g.SubDir}
	if u, err := url.Parse(g.Remote); err == nil && u.Host != "" {
		out.Host = u.Host
	} else if _, rest, ok := strings.Cut(g.Remote, "@"); ok {
		out.Host, _, _ = strings.Cut(rest, ":")
	}
	if err := checkGitRef(out.Ref); err != nil {
		return GitURL{}, fmt.Errorf("git URL %q: %w", shown, err)
	}
	// BuildKit roots the subdir ("../x" is "x"); a subdir that tries to
	// leave the repository is refused rather than silently rooted.
	_, fragment, _ := strings.Cut(v, "#")
	_, rawSub, _ := strings.Cut(fragment, ":")
	for _, sub := range []string{rawSub, out.SubDir} {
		if slices.Contains(strings.Split(sub, "/"), "..") {
			return GitURL{}, fmt.Errorf("git URL %q: subdir %q leaves the repository", shown, sub)
		}
	}
	return out, nil
}

// checkGitRef checks a ref the way git's check-ref-format would refuse the
// dangerous part of it: an option, "..", or characters git forbids.
func checkGitRef(ref string) error {
	switch {
	case ref == "":
		return nil
	case len(ref) > 255:
		return fmt.Errorf("ref is %d bytes; at most 255", len(ref))
	case strings.HasPrefix(ref, "-"):
		return fmt.Errorf("ref %q cannot start with \"-\"", ref)
	case strings.Contains(ref, ".."), strings.ContainsAny(ref, "~^?*[\\"), strings.HasSuffix(ref, ".lock"), strings.HasSuffix(ref, "/"):
		return fmt.Errorf("ref %q is not a valid branch, tag or commit", ref)
	}
	return nil
}

// clipURL shortens v for a message.
func clipURL(v string) string {
	if len(v) <= 200 {
		return v
	}
	i := 200
	for i > 0 && !utf8.RuneStart(v[i]) {
		i--
	}
	return v[:i] + "…"
}

// hideUserinfo is v with what stands between "://" and an "@" of its
// authority replaced by REDACTED, without parsing v (it may not parse).
func hideUserinfo(v string) string {
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok {
		return v
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return v
	}
	return scheme + "://REDACTED" + rest[at:]
}
