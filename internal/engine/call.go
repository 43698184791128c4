package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"strings"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	gateway "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/frontend/subrequests/lint"
	"github.com/moby/buildkit/frontend/subrequests/outline"
	"github.com/moby/buildkit/frontend/subrequests/targets"
	"github.com/moby/buildkit/solver/pb"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// callFunc is a parsed --call value: a frontend subrequest run instead of
// the build, whose result is printed (buildx's --call and --check).
type callFunc struct {
	name         string // "lint" (--call=check), "outline" or "targets"
	format       string // "" (text) or "json"
	ignoreStatus bool   // exit 0 even when the result says otherwise
}

// requestID is the frontend's name for the subrequest.
func (f *callFunc) requestID() string { return "frontend." + f.name }

// setCall takes the request's frontend method (check runs the frontend's
// lint subrequest) and --lint's level.
func (r *Request) setCall(c buildreq.Call, lint *buildreq.Lint) {
	if c.Method != "" {
		name := c.Method
		if name == "check" {
			name = "lint"
		}
		r.call = &callFunc{name: name, format: c.Format, ignoreStatus: c.IgnoreStatus}
	}
	if lint != nil {
		r.lintFailOn = lint.FailOn
		if r.lintFailOn == "" {
			r.lintFailOn = buildreq.LintFailOnError
		}
	}
}

// IsCall reports whether the request runs a frontend method (--call,
// --check) instead of building.
func (r *Request) IsCall() bool { return r.call != nil }

// subrequest runs the frontend with a request id (a lint, an outline...)
// instead of a build, through BuildKit's gateway, and returns the result's
// metadata (result.json, result.txt, result.statuscode, version).
// extraAttrs override frontend attributes for this request only.
func (r *Request) subrequest(ctx context.Context, c *client.Client, requestID string, extraAttrs map[string]string, progressOut io.Writer, observe func(*client.SolveStatus)) (map[string]string, error) {
	opt, err := r.sessionSolveOpt(progressOut)
	if err != nil {
		return nil, err
	}
	// Not a build: nothing to export, nothing for the build history.
	opt.CacheExports, opt.Internal = nil, true
	attrs := maps.Clone(opt.FrontendAttrs)
	maps.Copy(attrs, extraAttrs)
	attrs["requestid"] = requestID
	var meta map[string][]byte
	_, err = r.withProgress(ctx, progressOut, observe, func(ch chan *client.SolveStatus) (*client.SolveResponse, error) {
		return c.Build(ctx, opt, "kiln", func(ctx context.Context, gc gateway.Client) (*gateway.Result, error) {
			res, err := gc.Solve(ctx, gateway.SolveRequest{Frontend: dockerfileFrontend, FrontendOpt: attrs})
			if err != nil {
				return nil, err
			}
			meta = res.Metadata
			return res, nil
		}, ch)
	})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(meta))
	for k, v := range meta {
		out[k] = string(v)
	}
	return out, nil
}

// call runs r.call and returns its result as a SolveResponse whose
// ExporterResponse holds the result metadata, as buildx reports it (and
// writes it to --metadata-file).
func (r *Request) runCall(ctx context.Context, c *client.Client, progressOut io.Writer, observe func(*client.SolveStatus)) (*client.SolveResponse, error) {
	meta, err := r.subrequest(ctx, c, r.call.requestID(), nil, progressOut, observe)
	if err != nil {
		return nil, err
	}
	if _, ok := meta["result.json"]; !ok {
		return nil, fmt.Errorf("--call=%s: the frontend returned no result", r.call.name)
	}
	return &client.SolveResponse{ExporterResponse: meta}, nil
}

// PrintCallResult prints the result of a --call (or --check) build to w the
// way buildx does and returns the exit status the result asks for (a check
// that found warnings: 1) unless ignorestatus was given. A check that could
// not parse the Dockerfile is an error showing the offending lines.
func PrintCallResult(w io.Writer, r *Request, resp *client.SolveResponse) (int, error) {
	if r == nil || r.call == nil || resp == nil {
		return 0, nil
	}
	f, res := r.call, resp.ExporterResponse
	switch f.name {
	case "outline":
		if err := printValue(w, f.format, res, outline.PrintOutline); err != nil {
			return 0, err
		}
	case "targets":
		if err := printValue(w, f.format, res, targets.PrintTargets); err != nil {
			return 0, err
		}
	case "lint":
		var results lint.LintResults
		if err := json.Unmarshal([]byte(res["result.json"]), &results); err != nil {
			return 0, fmt.Errorf("--call=check: reading the result: %w", err)
		}
		sanitizeLint(&results)
		if f.format == "json" {
			fmt.Fprintln(w, res["result.json"])
		} else {
			switch n := len(results.Warnings); n {
			case 0:
			case 1:
				fmt.Fprintln(w, "Check complete, 1 warning has been found!")
			default:
				fmt.Fprintf(w, "Check complete, %d warnings have been found!\n", n)
			}
			if err := results.PrintTo(w, nil); err != nil {
				return 0, err
			}
		}
		if results.Error != nil {
			return 0, lintError(&results)
		}
		if len(results.Warnings) == 0 && f.format != "json" {
			fmt.Fprintln(w, "Check complete, no warnings found.")
		}
	}
	if v, ok := res["result.statuscode"]; ok && !f.ignoreStatus {
		if n, err := strconv.Atoi(v); err == nil && n != 0 {
			return n, nil
		}
	}
	return 0, nil
}

// printValue prints a subrequest result: result.json for format=json,
// otherwise the typed printer, falling back to the frontend's own text
// when the result is of a version this client cannot read.
func printValue(w io.Writer, format string, res map[string]string, print func([]byte, io.Writer) error) error {
	if format == "json" {
		fmt.Fprintln(w, res["result.json"])
		return nil
	}
	var b bytes.Buffer
	if err := print([]byte(res["result.json"]), &b); err != nil {
		if txt, ok := res["result.txt"]; ok {
			fmt.Fprint(w, txt)
			return nil
		}
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

// sanitizeLint makes a check result safe for BuildKit's printers, which
// index sources without checking: the result comes from the frontend, and
// a Dockerfile's # syntax= line can name any frontend image. Warnings that
// point nowhere valid are kept, without their source lines.
func sanitizeLint(results *lint.LintResults) {
	valid := func(i int32) bool {
		return i >= 0 && int(i) < len(results.Sources) && results.Sources[i] != nil
	}
	for i := range results.Warnings {
		w := &results.Warnings[i]
		if w.Location == nil || !valid(w.Location.SourceIndex) {
			w.Location = &pb.Location{SourceIndex: -1}
		}
	}
}

// lintError is the error of a check whose Dockerfile did not parse,
// showing the offending lines like the frontend's own errors.
func lintError(results *lint.LintResults) error {
	if i := results.Error.Location.SourceIndex; i < 0 || int(i) >= len(results.Sources) || results.Sources[i] == nil {
		// No source to show (PrintErrorTo would index out of range).
		return errdefs.Invalidf("%s", results.Error.Message)
	}
	var b bytes.Buffer
	results.PrintErrorTo(&b, nil)
	return errdefs.Invalidf("%s", strings.TrimRight(b.String(), "\n"))
}

// runLint implements --lint: the Dockerfile frontend's checks run before
// the build; violations are printed to progressOut with file:line and the
// lines around them; the build is refused (an error wrapping
// errdefs.ErrInvalid) when they reach the --lint-fail-on level. A clean
// Dockerfile prints nothing.
//
// BuildKit's checks are warnings; they count as errors when the Dockerfile
// opts in with `# check=error=true` (or --build-arg
// BUILDKIT_DOCKERFILE_CHECK=error=true), as they do in a plain build. A
// Dockerfile that does not parse is always an error.
func (r *Request) runLint(ctx context.Context, c *client.Client, progressOut io.Writer, observe func(*client.SolveStatus)) error {
	cfg, asErrors, err := r.checkConfig()
	if err != nil {
		return err
	}
	var extra map[string]string
	if asErrors {
		// With error=true the frontend answers the check with an error
		// naming only the rules; ask for the violations, decide here.
		extra = map[string]string{checkBuildArg: withoutCheckError(cfg)}
	}
	meta, err := r.subrequest(ctx, c, lint.RequestLint, extra, progressOut, observe)
	if err != nil {
		return fmt.Errorf("--lint: %w", err)
	}
	var results lint.LintResults
	if err := json.Unmarshal([]byte(meta["result.json"]), &results); err != nil {
		return fmt.Errorf("--lint: reading the result: %w", err)
	}
	sanitizeLint(&results)
	if results.Error != nil {
		return lintError(&results)
	}
	n := len(results.Warnings)
	if n == 0 {
		return nil
	}
	fmt.Fprintf(progressOut, "\n--lint: %d %s in %s:\n", n, plural(n, "violation", "violations"), r.frontendAttrs["filename"])
	if err := results.PrintTo(progressOut, nil); err != nil {
		return fmt.Errorf("--lint: printing the result: %w", err)
	}
	fmt.Fprintln(progressOut)
	switch {
	case r.lintFailOn == buildreq.LintFailOnWarn, r.lintFailOn == buildreq.LintFailOnError && asErrors:
		return errdefs.Invalidf("--lint: %d %s (see above); the build was not run", n, plural(n, "lint error", "lint errors"))
	}
	return nil
}

// checkBuildArg is the build argument that overrides a Dockerfile's
// `# check=` directive.
const checkBuildArg = "build-arg:BUILDKIT_DOCKERFILE_CHECK"

// checkConfig returns the Dockerfile's check configuration as the frontend
// reads it (the BUILDKIT_DOCKERFILE_CHECK build argument, else the
// `# check=` directive) and whether it sets error=true.
func (r *Request) checkConfig() (string, bool, error) {
	cfgStr, ok := r.frontendAttrs[checkBuildArg]
	if !ok && r.dockerfilePath != "" { // a git context's Dockerfile is on the builder
		dt, err := os.ReadFile(r.dockerfilePath)
		if err != nil {
			return "", false, fmt.Errorf("--lint: %w", err)
		}
		cfgStr, _, _, _ = parser.ParseDirective("check", dt)
	}
	cfg, err := linter.ParseLintOptions(cfgStr)
	if err != nil {
		return "", false, errdefs.InvalidWrapf(err, "--lint: the Dockerfile's check options")
	}
	return cfgStr, cfg.ReturnAsError, nil
}

// withoutCheckError is a check configuration with error=false and the
// rest (skip=, experimental=) kept.
func withoutCheckError(cfg string) string {
	var parts []string
	for _, p := range strings.Split(cfg, ";") {
		k, _, _ := strings.Cut(p, "=")
		if k = strings.TrimSpace(k); k != "" && k != "error" {
			parts = append(parts, strings.TrimSpace(p))
		}
	}
	return strings.Join(append(parts, "error=false"), ";")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
