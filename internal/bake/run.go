package bake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/distribution/reference"
	bkclient "github.com/moby/buildkit/client"
	bkerrdefs "github.com/moby/buildkit/solver/errdefs"
	"github.com/moby/buildkit/util/progress/progressui"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/session"
	"github.com/kiln-dev/kiln/internal/steps"
)

// bakeTarget is one target during a bake.
type bakeTarget struct {
	*Build
	project *bakeProject
	// layoutDir receives the target's image as an OCI layout when another
	// target uses it as a `target:` context; "" otherwise. layoutRef is
	// the oci-layout:// context value once it is built.
	layoutDir, layoutRef string
	// separateLayout is set when the layout is exported by a solve of its
	// own, after the one that makes the user's outputs (see handOver).
	separateLayout bool
	serverOpts     *cliv1.BuildOptions
	done           chan struct{} // closed when the target has an outcome

	// Set by the target's goroutine before done is closed.
	state   string // targetDone, targetFailed, targetCanceled
	err     error
	resp    *bkclient.SolveResponse
	outputs []engine.Output
	saved   []string // where --save put the image
}

const (
	targetDone     = "done"
	targetFailed   = "FAILED"
	targetCanceled = "canceled"
)

// bakeProject is one project's kiln build.
type bakeProject struct {
	id      string
	targets []*bakeTarget
	remote  *session.Remote // its SaveRefs get a per-target suffix
}

type bakeRun struct {
	o        *RunOptions
	stdout   io.Writer
	stderr   io.Writer
	targets  map[string]*bakeTarget
	order    []*bakeTarget // by name
	projects []*bakeProject
	display  chan *bkclient.SolveStatus
}

// RunOptions are a bake's inputs: kiln bake's flags and streams.
type RunOptions struct {
	Files     []string // -f; none: the default files in the working directory
	Overrides []string // --set values and those the other flags stand for
	Targets   []string // targets or groups; none: "default"
	Print     bool     // print the resolved targets and build nothing
	Save      bool
	SaveTags  []string // imply Save
	Progress  string
	Metadata  string // --metadata-file
	Project   string // the project of targets that name none
	Wait      time.Duration
	Stdin     io.Reader
	Stdout    io.Writer
	Stderr    io.Writer
	// Config resolves the server and token; it is called only once
	// something is to be built.
	Config func() (client.Config, error)
}

// Run builds a bake's targets on their projects' builders, each project
// one kiln build, through the same build session as `kiln build`.
func Run(ctx context.Context, o RunOptions) error {
	stdout, stderr := o.Stdout, o.Stderr
	mode, err := progressMode(o.Progress)
	if err != nil {
		return err
	}
	def, err := Load(ctx, LoadOptions{Files: o.Files, Stdin: o.Stdin, Targets: o.Targets, Overrides: o.Overrides})
	if err != nil {
		printSources(stderr, err)
		return err
	}
	if o.Print {
		// The targets that name no project build in the default one: print
		// it too when it is known (--project, KILN_PROJECT_ID, kiln.json),
		// as what would be built. None known is no error: --print contacts
		// nothing and may run anywhere.
		if id, err := client.FindProject(o.Project, "."); err == nil {
			def.SetDefaultProject(id)
		}
		return def.WriteJSON(stdout)
	}
	if skipped := def.LoadSkipped(o.Overrides); len(skipped) > 0 {
		names := make([]string, len(skipped))
		for i, l := range skipped {
			names[i] = l.String()
		}
		fmt.Fprintf(stderr, "kiln: warning: --load loads nothing for %s: as in buildx, it applies only to targets whose outputs are images; to load one, --set %s.output=type=docker\n",
			strings.Join(names, ", "), skipped[0].Target)
	}
	if len(o.SaveTags) > 0 {
		o.Save = true
	}

	tmp, err := os.MkdirTemp("", "kiln-bake-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	builds, err := def.Builds()
	if err != nil {
		return err
	}
	r := &bakeRun{o: &o, stdout: stdout, stderr: stderr, targets: map[string]*bakeTarget{}}
	for _, b := range builds {
		t := &bakeTarget{Build: b, done: make(chan struct{})}
		r.targets[b.Name] = t
		r.order = append(r.order, t)
	}
	for _, t := range r.order {
		for _, dep := range t.Links {
			if d := r.targets[dep]; d != nil && d.layoutDir == "" {
				d.layoutDir = filepath.Join(tmp, "links", d.Name)
			}
		}
	}

	// Everything local is checked before any build is created: each
	// target's options (as `kiln build` checks its flags), the Docker
	// engine for --load, and the projects.
	stdoutUsers := 0
	for _, t := range r.order {
		for _, w := range t.Warnings {
			fmt.Fprintf(stderr, "kiln: warning: target %q: %s\n", t.Name, w)
		}
		n, err := r.validate(ctx, t)
		if err != nil {
			return err
		}
		stdoutUsers += n
	}
	if stdoutUsers > 1 {
		return fmt.Errorf("bake: only one target can write its output to stdout (dest=-): %w", errdefs.ErrInvalid)
	}
	defaultProject := ""
	if NeedsDefaultProject(builds) {
		if defaultProject, err = client.FindProject(o.Project, "."); err != nil {
			return err
		}
	}
	groups, err := Group(builds, defaultProject)
	if err != nil {
		return err
	}
	for _, gp := range groups {
		p := &bakeProject{id: gp.ProjectID}
		for _, b := range gp.Builds {
			t := r.targets[b.Name]
			t.project = p
			p.targets = append(p.targets, t)
		}
		r.projects = append(r.projects, p)
	}

	display, err := progressui.NewDisplay(stderr, mode)
	if err != nil {
		return fmt.Errorf("--progress %s: %w", mode, err)
	}
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if err := r.createBuilds(ctx, cfg); err != nil {
		return err
	}
	return r.run(ctx, display, mode)
}

// bakeProgressMode checks --progress before anything is read.
func progressMode(v string) (progressui.DisplayMode, error) {
	switch m := progressui.DisplayMode(v); m {
	case "":
		return progressui.AutoMode, nil
	case progressui.AutoMode, progressui.PlainMode, progressui.TtyMode, progressui.QuietMode, progressui.RawJSONMode:
		return m, nil
	}
	return "", fmt.Errorf("--progress %q: unknown mode (supported: auto, plain, tty, quiet, rawjson): %w", v, errdefs.ErrInvalid)
}

// printSources prints the lines of a bake file an error points at, as
// buildx does under its error message.
func printSources(w io.Writer, err error) {
	for _, s := range bkerrdefs.Sources(err) {
		_ = s.Print(w)
	}
}

// options are the request t is built with: its own outputs and, when
// withLayout, the OCI layout its dependent targets read. Contexts from
// targets not built yet are left out (validation runs before anything is
// built).
func (r *bakeRun) options(t *bakeTarget, withLayout bool) buildreq.Request {
	o := t.Request
	o.NamedContexts = maps.Clone(o.NamedContexts)
	if withLayout {
		o.Outputs = append(slices.Clone(o.Outputs), layoutOutput(t.layoutDir))
	}
	for _, name := range sortedNames(t.Links) {
		if ref := r.targets[t.Links[name]].layoutRef; ref != "" {
			if o.NamedContexts == nil {
				o.NamedContexts = map[string]buildreq.NamedContext{}
			}
			o.NamedContexts[name] = buildreq.NamedContext{OCILayout: strings.TrimPrefix(ref, "oci-layout://")}
		}
	}
	return o
}

// layoutOutput is the output that hands a target's image to the targets
// using it as a `target:` context: an OCI layout directory on this
// machine, passed to them as an oci-layout:// named context. It works
// whichever builders the targets run on (a two-platform dependency is one
// index; each dependent platform picks its own image from it).
func layoutOutput(dir string) buildreq.Output {
	return buildreq.Output{Type: buildreq.OutputOCI, Dest: dir, Attrs: map[string]string{"tar": "false"}}
}

// validate prepares t once, as it will be built, and keeps what the
// server is told about it; it returns how many outputs write to stdout.
func (r *bakeRun) validate(ctx context.Context, t *bakeTarget) (int, error) {
	o := r.options(t, false)
	req, err := engine.Prepare(o, engine.IO{Stdout: r.stdout, Progress: r.o.Progress})
	if err != nil {
		return 0, fmt.Errorf("target %q: %w", t.Name, err)
	}
	defer req.Close()
	for _, w := range req.Warnings() {
		fmt.Fprintf(r.stderr, "kiln: warning: target %q: %s\n", t.Name, w)
	}
	if req.Loads() {
		if err := req.CheckDocker(ctx); err != nil {
			return 0, fmt.Errorf("target %q: %w", t.Name, err)
		}
	}
	if r.saves(t) {
		if err := session.CheckSave(req, r.o.SaveTags); err != nil {
			return 0, fmt.Errorf("target %q: %w", t.Name, err)
		}
		for _, tag := range r.o.SaveTags {
			if err := client.CheckTag(tag + "-" + t.Name); err != nil {
				return 0, fmt.Errorf("target %q: each target is saved as TAG-TARGET: %w", t.Name, err)
			}
		}
	}
	outs := req.Outputs()
	if t.layoutDir != "" {
		// BuildKit's client names the image of an OCI layout directory
		// from the solve's response, which is the last exporter's: with
		// other outputs in the same solve the layout would name their
		// image, and --metadata-file would report the layout's. So a
		// target with outputs of its own hands its image over in a second,
		// fully cached solve.
		t.separateLayout = len(outs) > 0 || r.saves(t)
		lo := o
		lo.Outputs = []buildreq.Output{layoutOutput(t.layoutDir)}
		lreq, err := engine.Prepare(lo, engine.IO{Stdout: r.stdout, Progress: r.o.Progress})
		if err != nil {
			return 0, fmt.Errorf("target %q: %w", t.Name, err)
		}
		lreq.Close()
	}
	name := t.Name
	t.serverOpts = &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BAKE, TargetName: &name, Tags: req.Tags(),
		Outputs: session.ServerOutputs(outs), Push: req.Pushes(), Load: req.Loads(), Save: r.saves(t)}
	n := 0
	for _, out := range outs {
		if out.Dest == "-" {
			n++
		}
	}
	return n, nil
}

// saves reports whether t is saved: --save applies to the targets asked for.
func (r *bakeRun) saves(t *bakeTarget) bool { return r.o.Save && t.Requested }

// createBuilds creates every project's kiln build, in parallel, before any
// target starts. If one cannot be created, the others are finished as
// canceled and nothing is built.
func (r *bakeRun) createBuilds(ctx context.Context, cfg client.Config) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, p := range r.projects {
		g.Go(func() error {
			var opts []*cliv1.BuildOptions
			saving := false
			for _, t := range p.targets {
				o := t.serverOpts
				if o.Save {
					// The server collects --save-tag values from every
					// entry; they are the bake's, so they are sent once.
					tags := r.o.SaveTags
					if saving {
						tags = nil
					}
					session.RequestSave(o, tags)
					saving = true
				}
				opts = append(opts, o)
			}
			remote, err := session.Create(gctx, cfg, p.id, opts...)
			if err != nil {
				return err
			}
			p.remote = remote
			if saving && len(p.remote.SaveRefs) == 0 {
				return fmt.Errorf("project %s: --save: the server did not say where to save the images (it has no registry, or is not a kiln server that supports --save)", p.id)
			}
			return nil
		})
	}
	err := g.Wait()
	if err != nil {
		for _, p := range r.projects {
			if p.remote != nil {
				p.remote.Finish(context.Canceled)
			}
		}
		return err
	}
	for _, p := range r.projects {
		names := make([]string, len(p.targets))
		for i, t := range p.targets {
			names[i] = t.Name
		}
		fmt.Fprintf(r.stderr, "kiln: build %s in project %s: %s\n", p.remote.ID, p.id, strings.Join(names, ", "))
	}
	return nil
}

// run builds every target, each as soon as the targets it uses as
// contexts are built, and reports the outcome. The first failure cancels
// the rest of the bake (buildx's policy).
func (r *bakeRun) run(ctx context.Context, display progressui.Display, mode progressui.DisplayMode) error {
	r.display = make(chan *bkclient.SolveStatus)
	var warnings []bkclient.VertexWarning
	displayed := make(chan struct{})
	go func() {
		defer close(displayed)
		// Drains until every target is done, even once ctx is canceled,
		// so the failing step is always shown.
		warnings, _ = display.UpdateFrom(context.WithoutCancel(ctx), r.display)
	}()

	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, t := range r.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(t.done)
			r.runTarget(bctx, cancel, t)
		}()
	}
	wg.Wait()
	close(r.display)
	<-displayed
	if mode != progressui.QuietMode && mode != progressui.RawJSONMode {
		engine.PrintWarnings(r.stderr, warnings)
	}

	// The exit code follows what kiln recorded: a project whose targets
	// all built but whose result kiln did not record fails the bake.
	var unrecorded []error
	for _, p := range r.projects {
		outcome := p.outcome()
		if err := p.remote.Finish(outcome); err != nil && outcome == nil {
			unrecorded = append(unrecorded, err)
		}
	}
	if err := r.report(); err != nil {
		return err
	}
	return errors.Join(unrecorded...)
}

// runTarget waits for the targets t uses as contexts, then builds t.
func (r *bakeRun) runTarget(ctx context.Context, cancel context.CancelCauseFunc, t *bakeTarget) {
	for _, name := range sortedNames(t.Links) {
		dep := r.targets[t.Links[name]]
		select {
		case <-dep.done:
		case <-ctx.Done():
		}
		if dep.state != targetDone {
			t.state, t.err = targetCanceled, fmt.Errorf("not built: target %q (context %q) did not build", dep.Name, name)
			return
		}
	}
	if ctx.Err() != nil {
		t.state, t.err = targetCanceled, context.Cause(ctx)
		return
	}
	err := r.build(ctx, t)
	switch {
	case err == nil:
		t.state = targetDone
	case ctx.Err() != nil:
		// Canceled because another target failed (or the user
		// interrupted): not this target's failure.
		t.state, t.err = targetCanceled, context.Cause(ctx)
	default:
		t.state, t.err = targetFailed, err
		cancel(fmt.Errorf("canceled: target %q failed", t.Name))
	}
}

// build runs one target on its project's build, through the same remote
// build code as `kiln build` (builder connection, health, status and
// timings reports).
func (r *bakeRun) build(ctx context.Context, t *bakeTarget) error {
	withLayout := t.layoutDir != "" && !t.separateLayout
	req, err := r.solve(ctx, t, r.options(t, withLayout), t.Name, false)
	if err != nil {
		return err
	}
	defer req.Close()
	t.outputs = req.Outputs()
	if withLayout {
		t.outputs = slices.DeleteFunc(t.outputs, func(o engine.Output) bool { return o.Dest == t.layoutDir })
	}
	if t.separateLayout {
		o := r.options(t, false)
		o.Outputs = []buildreq.Output{layoutOutput(t.layoutDir)}
		lreq, err := r.solve(ctx, t, o, t.Name+" (as context)", true)
		if err != nil {
			return fmt.Errorf("handing the image over to the targets using it: %w", err)
		}
		lreq.Close()
	}
	if t.layoutDir != "" {
		d, err := layoutDigest(t.layoutDir)
		if err != nil {
			return fmt.Errorf("reading the image handed to dependent targets: %w", err)
		}
		t.layoutRef = "oci-layout://" + t.layoutDir + "@" + d
	}
	return nil
}

// solve prepares o and runs it on t's build, its steps shown under prefix.
// The hand-over solve (handOver) is only displayed: its steps are the
// main solve's, all cached, and are not reported to the server again.
// The main solve sets t.resp. The caller closes the returned request.
func (r *bakeRun) solve(ctx context.Context, t *bakeTarget, o buildreq.Request, prefix string, handOver bool) (*engine.Request, error) {
	// The bake renders one display for all targets.
	req, err := engine.Prepare(o, engine.IO{Stdout: r.stdout, Progress: string(progressui.QuietMode)})
	if err != nil {
		return nil, err
	}
	if r.saves(t) && !handOver {
		refs, err := targetRefs(t.project.remote.SaveRefs, t.Name)
		if err == nil {
			err = req.AddSave(refs, t.project.remote.SaveCreds)
		}
		if err != nil {
			req.Close()
			return nil, err
		}
		t.saved = refs
	}

	tap := func(st *bkclient.SolveStatus) *bkclient.SolveStatus {
		r.display <- engine.PrefixStatus(prefix, st)
		if handOver {
			return nil
		}
		// Reported as BuildKit sent it: the targets' shared stages are
		// the same vertices, one step each, as the builder records them.
		return st
	}
	var msgs io.Writer = targetWriter{w: r.stderr, target: t.Name}
	if handOver {
		msgs = io.Discard // the main solve said it all
	}
	// The steps kiln records from the builder are named with the target,
	// as this display shows them.
	ctx = steps.WithLabel(ctx, t.Name)
	resp, err := t.project.remote.Run(ctx, req, session.RunOptions{Wait: r.o.Wait, Messages: msgs, Tap: tap})
	if err != nil {
		req.Close()
		return nil, err
	}
	if !handOver {
		t.resp = resp
	}
	return req, nil
}

// targetRefs suffixes the tag of each saved reference with the target
// name (<registry>/<project>:<build id>-<target>), so the targets of one
// build do not overwrite each other.
func targetRefs(refs []string, target string) ([]string, error) {
	var out []string
	for _, ref := range refs {
		named, err := reference.ParseNormalizedNamed(ref)
		if err != nil {
			return nil, fmt.Errorf("--save: the server's image name %q: %w", ref, err)
		}
		tagged, ok := named.(reference.Tagged)
		if !ok {
			return nil, fmt.Errorf("--save: the server's image name %q has no tag", ref)
		}
		withTarget, err := reference.WithTag(reference.TrimNamed(named), tagged.Tag()+"-"+target)
		if err != nil {
			return nil, fmt.Errorf("--save: tag %s-%s: %w", tagged.Tag(), target, err)
		}
		out = append(out, withTarget.String())
	}
	return out, nil
}

// layoutDigest is the image an OCI layout directory holds: the manifest
// (or index) BuildKit's client listed in index.json, under each name.
func layoutDigest(dir string) (string, error) {
	dt, err := os.ReadFile(filepath.Join(dir, ocispecs.ImageIndexFile))
	if err != nil {
		return "", err
	}
	var idx ocispecs.Index
	if err := json.Unmarshal(dt, &idx); err != nil {
		return "", err
	}
	if len(idx.Manifests) == 0 {
		return "", errors.New("the OCI layout lists no image")
	}
	return idx.Manifests[0].Digest.String(), nil
}

// outcome is how a project's build ended, for FinishBuild: the error of a
// target that failed, canceled if a target was canceled, else success.
func (p *bakeProject) outcome() error {
	var canceled bool
	for _, t := range p.targets {
		switch t.state {
		case targetFailed:
			return fmt.Errorf("target %q: %w", t.Name, t.err)
		case targetCanceled:
			canceled = true
		}
	}
	if canceled {
		return context.Canceled
	}
	return nil
}

// report prints every target's outcome and writes --metadata-file; the
// error names the failed targets.
func (r *bakeRun) report() error {
	var failed []*bakeTarget
	canceled := 0
	for _, t := range r.order {
		where := fmt.Sprintf("build %s, project %s", t.project.remote.ID, t.project.id)
		switch t.state {
		case targetDone:
			fmt.Fprintf(r.stderr, "kiln: target %s: done (%s)%s\n", t.Name, where, session.DescribeOutputs(t.outputs, t.resp))
			if len(t.saved) > 0 {
				fmt.Fprintf(r.stderr, "kiln: target %s: saved to kiln's registry as %s (kiln pull %s:%s-%s)\n",
					t.Name, strings.Join(t.saved, ", "), t.project.id, t.project.remote.ID, t.Name)
			}
		case targetFailed:
			failed = append(failed, t)
			fmt.Fprintf(r.stderr, "kiln: target %s: FAILED (%s): %v\n", t.Name, where, t.err)
		default:
			canceled++
			fmt.Fprintf(r.stderr, "kiln: target %s: canceled (%s): %v\n", t.Name, where, t.err)
		}
	}
	switch {
	case len(failed) == 1:
		return fmt.Errorf("bake failed: target %q: %w", failed[0].Name, failed[0].err)
	case len(failed) > 1:
		names := make([]string, len(failed))
		for i, t := range failed {
			names[i] = t.Name
		}
		return fmt.Errorf("bake failed: targets %s failed; first: %w", strings.Join(names, ", "), failed[0].err)
	case canceled > 0:
		return fmt.Errorf("bake canceled: %w", errdefs.ErrCanceled)
	}
	if r.o.Metadata != "" {
		results := map[string]engine.TargetResult{}
		for _, t := range r.order {
			results[t.Name] = engine.TargetResult{Resp: t.resp, Ref: engine.BuildRef{ProjectID: t.project.id, BuildID: t.project.remote.ID}}
		}
		if err := engine.WriteBakeMetadataFile(r.o.Metadata, results); err != nil {
			return err
		}
	}
	return nil
}

// targetWriter names the target in the "kiln: …" lines the remote build
// code prints (waiting for a builder, which builder builds what). Each of
// those lines is one Write.
type targetWriter struct {
	w      io.Writer
	target string
}

func (tw targetWriter) Write(p []byte) (int, error) {
	rest, ok := bytes.CutPrefix(p, []byte("kiln: "))
	if !ok {
		return tw.w.Write(p)
	}
	if _, err := fmt.Fprintf(tw.w, "kiln: target %s: %s", tw.target, rest); err != nil {
		return 0, err
	}
	return len(p), nil
}

func sortedNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
