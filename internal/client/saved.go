package client

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1/cliv1extraconnect"
)

// Saved builds: `kiln build --save` pushes a build to kiln's registry as
// <registry>/<project id>:<build id> (and :<tag> per --save-tag); `kiln
// pull` and `kiln push` find it again from a build id or a tag.

// SavedArg is what `kiln pull` and `kiln push` are given.
type SavedArg struct {
	// BuildID is set for a bare argument that can be a build id. It can
	// also be a tag of the current project: see [Config.ResolveSaved].
	BuildID string
	// ProjectID and Tag are set for PROJECT:TAG; ProjectID is empty for
	// :TAG (the current project), and for a bare argument that can only
	// be a tag.
	ProjectID, Tag string
}

var (
	buildIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	// The distribution-spec grammars of one repository path component and
	// of a tag.
	projectRe = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRe     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ParseSavedArg reads BUILD_ID, PROJECT:TAG, :TAG or TAG.
func ParseSavedArg(arg string) (SavedArg, error) {
	const want = "want a build id, PROJECT:TAG or :TAG"
	switch {
	case arg == "":
		return SavedArg{}, fmt.Errorf("empty image argument: %s", want)
	case len(arg) > 300:
		return SavedArg{}, fmt.Errorf("image argument longer than 300 characters: %s", want)
	case strings.Contains(arg, "@"):
		return SavedArg{}, fmt.Errorf("%q: digests are not supported here: %s", arg, want)
	case strings.Contains(arg, "/"):
		return SavedArg{}, fmt.Errorf("%q: %s, not an image reference (kiln pull and push read kiln's registry)", arg, want)
	}
	if proj, tag, ok := strings.Cut(arg, ":"); ok {
		if proj != "" && (len(proj) > 128 || !projectRe.MatchString(proj)) {
			return SavedArg{}, fmt.Errorf("%q: %q is not a project id: %s", arg, proj, want)
		}
		if !tagRe.MatchString(tag) {
			return SavedArg{}, fmt.Errorf("%q: %q is not a valid tag: %s", arg, tag, want)
		}
		return SavedArg{ProjectID: proj, Tag: tag}, nil
	}
	if buildIDRe.MatchString(arg) {
		return SavedArg{BuildID: arg}, nil
	}
	if tagRe.MatchString(arg) {
		return SavedArg{Tag: arg}, nil
	}
	return SavedArg{}, fmt.Errorf("%q: %s", arg, want)
}

// SavedImage is an image in kiln's registry and credentials to pull it.
type SavedImage struct {
	Ref                string // <registry host>/<project>:<build id or tag>
	Username, Password string // a short-lived pull token, as x-token
	BuildID            string // the build, when resolved from a build id
	// What describes the argument for messages: "build X", "tag T of
	// project P", or "build or tag X (project P)".
	What string
	// missing explains, for NotSaved, why nothing is at Ref.
	missing string
}

// NotSaved says why there is no image at img.Ref, for an error message.
func (img SavedImage) NotSaved() string { return img.missing }

// ResolveSaved finds arg's image. A build id is asked of the server
// (depot.cli.v1 GetPullInfo), which answers the reference and pull
// credentials. A tag lives in a project (PROJECT:TAG, or the one project
// returns: flags, environment, kiln.json) in the registry at the API URL's
// host, and is pulled with a pull token (GetPullToken). A bare argument the
// server knows no build for is tried as a tag of the current project.
func (c Config) ResolveSaved(ctx context.Context, arg SavedArg, project func() (string, error)) (SavedImage, error) {
	if arg.BuildID != "" {
		res, err := c.PullInfo(ctx, arg.BuildID)
		if err == nil {
			return SavedImage{Ref: res.Reference, Username: res.Username, Password: res.Password, BuildID: arg.BuildID, What: "build " + arg.BuildID,
				missing: fmt.Sprintf("build %s was not saved (build with --save), or its saved image has expired", arg.BuildID)}, nil
		}
		if connect.CodeOf(err) != connect.CodeNotFound {
			return SavedImage{}, fmt.Errorf("build %s: %w", arg.BuildID, err)
		}
		proj, perr := project()
		if perr != nil || !tagRe.MatchString(arg.BuildID) {
			return SavedImage{}, fmt.Errorf("no build %s (a --save-tag is named PROJECT:TAG, or TAG with --project)", arg.BuildID)
		}
		img, terr := c.savedTag(ctx, proj, arg.BuildID)
		img.What = fmt.Sprintf("build or tag %s (project %s)", arg.BuildID, proj)
		img.missing = fmt.Sprintf("there is no build %s, and no image saved as %s in project %s", arg.BuildID, img.Ref, proj)
		return img, terr
	}
	proj := arg.ProjectID
	if proj == "" {
		var err error
		if proj, err = project(); err != nil {
			return SavedImage{}, err
		}
		if !projectRe.MatchString(proj) {
			return SavedImage{}, fmt.Errorf("project %q is not a valid repository name", proj)
		}
	}
	return c.savedTag(ctx, proj, arg.Tag)
}

func (c Config) savedTag(ctx context.Context, projectID, tag string) (SavedImage, error) {
	host, err := RegistryHost(c.APIURL)
	if err != nil {
		return SavedImage{}, err
	}
	res, err := c.Builds().GetPullToken(ctx, connect.NewRequest(&cliv1.GetPullTokenRequest{ProjectId: &projectID}))
	if err != nil {
		return SavedImage{}, fmt.Errorf("pull token for project %s: %w", projectID, err)
	}
	ref := host + "/" + projectID + ":" + tag
	return SavedImage{Ref: ref, Username: "x-token", Password: res.Msg.Token,
		What:    fmt.Sprintf("tag %s of project %s", tag, projectID),
		missing: fmt.Sprintf("no image is saved as %s (save one with --save-tag %s), or it has expired", ref, tag)}, nil
}

// RegistryHost is kiln's registry as reached at apiURL: its host[:port]
// (the registry answers at /v2/ on the API's listener). An unspecified
// address (0.0.0.0, ::) means this machine.
func RegistryHost(apiURL string) (string, error) {
	u, err := url.Parse(apiURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("API URL %q has no host", apiURL)
	}
	host, port := u.Hostname(), u.Port()
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	if port == "" {
		if strings.Contains(host, ":") {
			return "[" + host + "]", nil
		}
		return host, nil
	}
	return net.JoinHostPort(host, port), nil
}

const pullInfoProcedure = "/depot.cli.v1.BuildService/GetPullInfo"

// PullInfo calls depot.cli.v1.BuildService/GetPullInfo (depot-go's client
// lacks it).
func (c Config) PullInfo(ctx context.Context, buildID string) (*cliv1extra.GetPullInfoResponse, error) {
	cl := connect.NewClient[cliv1extra.GetPullInfoRequest, cliv1extra.GetPullInfoResponse](http.DefaultClient, c.APIURL+pullInfoProcedure, c.opts()...)
	res, err := cl.CallUnary(ctx, connect.NewRequest(&cliv1extra.GetPullInfoRequest{BuildId: buildID}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// Pushes is a depot.cli.v1.PushService client.
func (c Config) Pushes() cliv1extraconnect.PushServiceClient {
	return cliv1extraconnect.NewPushServiceClient(http.DefaultClient, c.APIURL, c.opts()...)
}

// CheckTag validates a --save-tag value (the distribution-spec tag grammar).
func CheckTag(tag string) error {
	if !tagRe.MatchString(tag) {
		if len(tag) > 140 {
			tag = tag[:140] + "…"
		}
		return fmt.Errorf("--save-tag %q: not a valid tag (letters, digits, '_', '.', '-'; up to 128; not starting with '.' or '-')", tag)
	}
	return nil
}
