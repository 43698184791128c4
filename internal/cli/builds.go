package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/retry"
)

func newBuildsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "builds",
		Short: "List, follow, cancel and rebuild a project's builds",
		Long: `Builds kiln ran from an uploaded context (kiln build --detach, the platform
API) and builds clients ran on the project's builder (kiln build, depot build).`,
		Example: `  kiln builds list --project k3v9x0ab2mqd
  kiln builds list --customer acme-42 --limit 5
  kiln builds get b7f2c1d9e0aa
  kiln builds insights --project k3v9x0ab2mqd
  kiln builds logs -f b7f2c1d9e0aa
  kiln builds cancel b7f2c1d9e0aa
  kiln builds rebuild b7f2c1d9e0aa`,
	}
	// --project on every subcommand, as on every other command: list lists
	// its builds; the others, given a build id, refuse a build of another
	// project (buildsProject).
	bp := &buildsProject{}
	cmd.PersistentFlags().StringVar(&bp.flag, "project", "", "project id (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json); with a BUILD_ID, the build must be in it")
	cmd.AddCommand(newBuildsListCmd(g, bp), newBuildsGetCmd(g, bp), newBuildsInsightsCmd(g, bp), newBuildsLogsCmd(g, bp), newBuildsCancelCmd(g, bp), newBuildsRebuildCmd(g, bp))
	return cmd
}

// buildsProject is `kiln builds`' --project.
type buildsProject struct{ flag string }

// check refuses build id when --project names another project. A build id
// names its build on its own, so only an explicit --project is checked,
// not KILN_PROJECT_ID or a kiln.json that happens to be around.
func (bp *buildsProject) check(ctx context.Context, api kilnv1connect.SourceBuildServiceClient, id string) error {
	if bp.flag == "" {
		return nil
	}
	want, err := client.FindProject(bp.flag, ".")
	if err != nil {
		return err
	}
	res, err := api.GetBuild(ctx, connect.NewRequest(&kilnv1.GetBuildRequest{BuildId: id}))
	if err != nil {
		return fmt.Errorf("get build %s: %w", id, err)
	}
	if got := res.Msg.Build.GetProjectId(); got != want {
		return fmt.Errorf("build %s is in project %s, not in --project %s: %w", id, got, want, errdefs.ErrInvalid)
	}
	return nil
}

// ref is the project whose builds to list: the platform customer's with
// --customer, else --project, KILN_PROJECT_ID or kiln.json.
func (bp *buildsProject) ref(customer string) (*kilnv1.ProjectRef, error) {
	if bp.flag != "" && customer != "" {
		return nil, fmt.Errorf("--customer and --project: give one: %w", errdefs.ErrInvalid)
	}
	if customer != "" {
		return &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_CustomerId{CustomerId: customer}}, nil
	}
	id, err := client.FindProject(bp.flag, ".")
	if err != nil {
		return nil, err
	}
	return &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_ProjectId{ProjectId: id}}, nil
}

func newBuildsListCmd(g *globals, bp *buildsProject) *cobra.Command {
	var customer string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List a project's builds, newest first",
		Long: `List a project's builds, newest first. The project is --project, the
platform customer's project with --customer, or KILN_PROJECT_ID / kiln.json.`,
		Example: `  kiln builds list
  kiln builds list --project k3v9x0ab2mqd --limit 100
  kiln builds list --customer acme-42 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 {
				return fmt.Errorf("--limit %d: must be at least 1: %w", limit, errdefs.ErrInvalid)
			}
			ref, err := bp.ref(customer)
			if err != nil {
				return err
			}
			c, err := g.config()
			if err != nil {
				return err
			}
			builds, err := listBuilds(cmd.Context(), c.SourceBuilds(), ref, limit)
			if err != nil {
				return err
			}
			if asJSON {
				return printProtoJSONList(cmd.OutOrStdout(), builds)
			}
			return printBuildTable(cmd.OutOrStdout(), builds, time.Now())
		},
	}
	cmd.Flags().StringVar(&customer, "customer", "", "the platform customer whose project to list")
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many builds")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// listBuilds pages through ListBuilds until limit builds or the end.
func listBuilds(ctx context.Context, api kilnv1connect.SourceBuildServiceClient, ref *kilnv1.ProjectRef, limit int) ([]*kilnv1.Build, error) {
	var builds []*kilnv1.Build
	token := ""
	for len(builds) < limit {
		res, err := api.ListBuilds(ctx, connect.NewRequest(&kilnv1.ListBuildsRequest{
			Project: ref, PageSize: int32(min(limit-len(builds), 100)), PageToken: token}))
		if err != nil {
			return nil, fmt.Errorf("list builds: %w", err)
		}
		builds = append(builds, res.Msg.Builds...)
		if res.Msg.NextPageToken == "" || res.Msg.NextPageToken == token || len(res.Msg.Builds) == 0 {
			break
		}
		token = res.Msg.NextPageToken
	}
	if len(builds) > limit {
		builds = builds[:limit]
	}
	return builds, nil
}

func printBuildTable(w io.Writer, builds []*kilnv1.Build, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUILD ID\tSTATUS\tKIND\tCREATED\tDURATION\tIMAGE")
	for _, b := range builds {
		image := "-"
		if len(b.ImageRefs) > 0 {
			image = b.ImageRefs[0]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.BuildId, statusName(b.Status), orDash(b.Kind),
			relativeTime(b.CreatedAt, now), orDash(buildDuration(b, now)), image)
	}
	return tw.Flush()
}

func newBuildsGetCmd(g *globals, bp *buildsProject) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "get BUILD_ID",
		Short: "Show a build: status, times, image, error and its steps, the slowest first",
		Example: `  kiln builds get b7f2c1d9e0aa
  kiln builds get b7f2c1d9e0aa --json | jq -r .imageDigest`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			if err := bp.check(cmd.Context(), c.SourceBuilds(), args[0]); err != nil {
				return err
			}
			res, err := c.SourceBuilds().GetBuild(cmd.Context(), connect.NewRequest(&kilnv1.GetBuildRequest{BuildId: args[0]}))
			if err != nil {
				return fmt.Errorf("get build %s: %w", args[0], err)
			}
			if asJSON {
				return printProtoJSON(cmd.OutOrStdout(), res.Msg.Build)
			}
			var ins *buildInsights
			if res.Msg.Build.Status != kilnv1.BuildStatus_BUILD_STATUS_QUEUED {
				// The build was read: its steps missing is no reason to
				// show nothing.
				if ins, err = insightsOf(cmd.Context(), c, args[0]); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "kiln: no step insights: %v\n", err)
				}
			}
			now := time.Now()
			// The build's page, at the address this CLI reaches the server.
			page := strings.TrimSuffix(c.APIURL, "/") + "/builds/" + url.PathEscape(res.Msg.Build.BuildId)
			if err := printBuildDetail(cmd.OutOrStdout(), res.Msg.Build, page, ins, now); err != nil {
				return err
			}
			return ins.printSteps(cmd.OutOrStdout(), now)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printBuildDetail prints a build as "key: value" lines, with its page's
// URL and a line counting its steps when ins is not nil; empty fields are
// left out.
func printBuildDetail(w io.Writer, b *kilnv1.Build, pageURL string, ins *buildInsights, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	when := func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return ""
		}
		return ts.AsTime().Local().Format(time.RFC3339) + " (" + relativeTime(ts, now) + ")"
	}
	line("build", b.BuildId)
	line("url", pageURL)
	line("status", statusName(b.Status))
	if b.Status == kilnv1.BuildStatus_BUILD_STATUS_QUEUED {
		line("queue position", fmt.Sprintf("%d ahead", b.QueuePosition))
	}
	line("kind", b.Kind)
	line("project", b.ProjectId)
	line("customer", b.CustomerId)
	line("created", when(b.CreatedAt))
	line("started", when(b.StartedAt))
	line("finished", when(b.FinishedAt))
	line("duration", buildDuration(b, now))
	line("git url", b.GitUrl)
	line("git commit", b.GitCommit)
	line("dockerfile", b.Dockerfile)
	line("target", b.Target)
	line("platforms", strings.Join(b.Platforms, ", "))
	line("rebuild of", b.RebuildOf)
	for _, ref := range b.ImageRefs {
		line("image", ref)
	}
	line("digest", b.ImageDigest)
	line("error", b.Error)
	if ins != nil {
		line("steps", stepSummary(ins.stats))
		for _, l := range ins.resourceLines() {
			line(l[0], l[1])
		}
	}
	return tw.Flush()
}

func newBuildsLogsCmd(g *globals, bp *buildsProject) *cobra.Command {
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "logs BUILD_ID",
		Short: "Print a build's steps and log lines; -f follows it to the end",
		Long: `Print a build's steps and log lines as 'docker buildx build --progress=plain'
does: each step gets a number (#3) on first sight, then its log lines, CACHED,
DONE or ERROR. With -f the command follows the build until it ends and exits
non-zero if it failed or was canceled; without -f it prints what is recorded
so far.`,
		Example: `  kiln builds logs b7f2c1d9e0aa
  kiln builds logs -f b7f2c1d9e0aa
  kiln builds logs -f "$(kiln build --detach .)"
  kiln builds logs --json b7f2c1d9e0aa | jq -c 'select(.log)'`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			if err := bp.check(cmd.Context(), c.SourceBuilds(), args[0]); err != nil {
				return err
			}
			return watchBuild(cmd.Context(), c.SourceBuilds(), args[0], follow, asJSON, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the build until it ends")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one line of JSON")
	return cmd
}

// watchBuild prints a build's events (client.WatchBuild: following, a
// stream that breaks is opened again; the replay's already printed lines
// are skipped).
func watchBuild(ctx context.Context, api kilnv1connect.SourceBuildServiceClient, id string, follow, asJSON bool, stdout, stderr io.Writer) error {
	p := newBuildLogPrinter(stdout, id)
	_, err := client.WatchBuild(ctx, api, id, follow, func(ev *kilnv1.WatchBuildResponse) (bool, error) {
		if !asJSON {
			return p.event(ev), nil
		}
		if !p.record(ev) {
			return false, nil
		}
		return true, printProtoJSONLine(p.w, ev)
	})
	switch {
	case errors.Is(err, client.ErrStreamEnded):
		return fmt.Errorf("the log stream of build %s ended before the build did; run `kiln builds logs -f %s` again: %w", id, id, errdefs.ErrUnavailable)
	case err != nil && ctx.Err() != nil:
		return err
	case err != nil:
		return fmt.Errorf("watch build %s: %w", id, err)
	}
	if p.build == nil {
		return fmt.Errorf("build %s: the server sent no status: %w", id, errdefs.ErrUnavailable)
	}
	if !p.finished() {
		fmt.Fprintf(stderr, "build is still %s; follow with -f\n", statusName(p.build.Status))
		return nil
	}
	return p.end(!asJSON)
}

// buildLogPrinter renders WatchBuild events like buildx's plain progress.
// It is idempotent over a replay: steps, statuses and log lines already
// printed are not printed again.
type buildLogPrinter struct {
	w       io.Writer
	id      string
	build   *kilnv1.Build         // the latest status
	seen    kilnv1.BuildStatus    // the furthest status printed
	steps   map[string]*stepState // by digest
	next    int                   // the last step number given
	lastSeq int64                 // the last log line printed
}

type stepState struct {
	n                            int
	named, cached, done, errored bool
}

func newBuildLogPrinter(w io.Writer, id string) *buildLogPrinter {
	return &buildLogPrinter{w: w, id: id, steps: map[string]*stepState{}}
}

func (p *buildLogPrinter) step(digest string) *stepState {
	s, ok := p.steps[digest]
	if !ok {
		p.next++
		s = &stepState{n: p.next}
		p.steps[digest] = s
	}
	return s
}

// record takes in an event without printing it and reports whether it
// was new (--json prints the events themselves).
func (p *buildLogPrinter) record(ev *kilnv1.WatchBuildResponse) bool {
	switch e := ev.Event.(type) {
	case *kilnv1.WatchBuildResponse_Build:
		return p.advance(e.Build)
	case *kilnv1.WatchBuildResponse_Log:
		if e.Log.Seq > 0 && e.Log.Seq <= p.lastSeq {
			return false
		}
		p.lastSeq = max(p.lastSeq, e.Log.Seq)
	}
	return true
}

// event prints one event and reports whether it said anything new.
func (p *buildLogPrinter) event(ev *kilnv1.WatchBuildResponse) bool {
	switch e := ev.Event.(type) {
	case *kilnv1.WatchBuildResponse_Build:
		if !p.advance(e.Build) {
			return false
		}
		msg := statusName(e.Build.Status)
		if e.Build.Status == kilnv1.BuildStatus_BUILD_STATUS_QUEUED && e.Build.QueuePosition > 0 {
			msg += fmt.Sprintf(" (%d ahead)", e.Build.QueuePosition)
		}
		fmt.Fprintf(p.w, "build %s: %s\n", p.id, msg)
		return true
	case *kilnv1.WatchBuildResponse_Step:
		return p.printStep(e.Step)
	case *kilnv1.WatchBuildResponse_Log:
		l := e.Log
		if l.Seq > 0 && l.Seq <= p.lastSeq {
			return false
		}
		p.lastSeq = max(p.lastSeq, l.Seq)
		s := p.step(l.Digest)
		msg := strings.TrimSuffix(l.Message, "\n")
		for _, line := range strings.Split(msg, "\n") {
			fmt.Fprintf(p.w, "#%d %s\n", s.n, strings.TrimRight(line, "\r"))
		}
		return true
	}
	return false
}

// advance takes in a build status and reports whether it is new. A
// build's status only moves forward (queued, running, pushing, then how it
// ended), so one seen before, replayed after a reconnect, is not new.
func (p *buildLogPrinter) advance(b *kilnv1.Build) bool {
	p.build = b
	if p.seen != kilnv1.BuildStatus_BUILD_STATUS_UNSPECIFIED && b.Status <= p.seen {
		return false
	}
	p.seen = b.Status
	return true
}

func (p *buildLogPrinter) printStep(st *kilnv1.Step) bool {
	s := p.step(st.Digest)
	printed := false
	out := func(format string, a ...any) {
		fmt.Fprintf(p.w, "#%d "+format+"\n", append([]any{s.n}, a...)...)
		printed = true
	}
	if !s.named && st.Name != "" {
		s.named = true
		out("%s", st.Name)
	}
	switch {
	case st.Error != "" && !s.errored:
		s.errored = true
		out("ERROR: %s", st.Error)
	case st.Cached && !s.cached && !s.done:
		s.cached = true
		out("CACHED")
	case st.CompletedAt != nil && st.Error == "" && !st.Cached && !s.done && !s.cached:
		s.done = true
		if st.StartedAt != nil {
			// Never negative: a step's start and end can come from
			// different clocks or status updates.
			out("DONE %.1fs", max(st.CompletedAt.AsTime().Sub(st.StartedAt.AsTime()), 0).Seconds())
		} else {
			out("DONE")
		}
	}
	return printed
}

func (p *buildLogPrinter) finished() bool {
	return p.build != nil && client.Ended(p.build.Status)
}

// end reports how the build ended: its image when it succeeded (printed
// when say, after the status line "build ID: succeeded" that event
// printed), an error otherwise (so the exit code is 1).
func (p *buildLogPrinter) end(say bool) error {
	b := p.build
	switch b.Status {
	case kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED:
		if say {
			for _, ref := range b.ImageRefs {
				fmt.Fprintf(p.w, "image: %s\n", ref)
			}
			if b.ImageDigest != "" {
				fmt.Fprintf(p.w, "digest: %s\n", b.ImageDigest)
			}
		}
		return nil
	case kilnv1.BuildStatus_BUILD_STATUS_CANCELED:
		return &buildEndedError{id: p.id, how: "was canceled", reason: b.Error}
	}
	return &buildEndedError{id: p.id, how: "failed", reason: b.Error}
}

// buildEndedError is a build that failed or was canceled, as the last
// line of `kiln builds logs`.
type buildEndedError struct{ id, how, reason string }

func (e *buildEndedError) Error() string {
	if e.reason == "" {
		return fmt.Sprintf("build %s %s", e.id, e.how)
	}
	return fmt.Sprintf("build %s %s: %s", e.id, e.how, e.reason)
}

func newBuildsCancelCmd(g *globals, bp *buildsProject) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "cancel BUILD_ID",
		Short:   "Cancel a queued or running build; prints its status after",
		Long:    "Cancel a queued or running build. A build that already ended is left as it is; its status is printed either way.",
		Example: "  kiln builds cancel b7f2c1d9e0aa",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			if err := bp.check(cmd.Context(), c.SourceBuilds(), args[0]); err != nil {
				return err
			}
			res, err := c.SourceBuilds().CancelBuild(cmd.Context(), connect.NewRequest(&kilnv1.CancelBuildRequest{BuildId: args[0]}))
			if err != nil {
				return fmt.Errorf("cancel build %s: %w", args[0], err)
			}
			if asJSON {
				return printProtoJSON(cmd.OutOrStdout(), res.Msg.Build)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "build %s: %s\n", args[0], statusName(res.Msg.Build.GetStatus()))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the build as JSON")
	return cmd
}

func newBuildsRebuildCmd(g *globals, bp *buildsProject) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rebuild BUILD_ID",
		Short: "Queue a new build with the same context and options; prints its id",
		Long: `Queue a new build with the same uploaded context and options as BUILD_ID,
while the server still keeps that context. Only the new build's id goes to
stdout, as with 'kiln build --detach'.`,
		Example: `  kiln builds rebuild b7f2c1d9e0aa
  kiln builds logs -f "$(kiln builds rebuild b7f2c1d9e0aa)"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			if err := bp.check(cmd.Context(), c.SourceBuilds(), args[0]); err != nil {
				return err
			}
			res, err := retry.Value(cmd.Context(), retry.API, func(ctx context.Context) (*connect.Response[kilnv1.RebuildBuildResponse], error) {
				return c.SourceBuilds().RebuildBuild(ctx, connect.NewRequest(&kilnv1.RebuildBuildRequest{BuildId: args[0]}))
			})
			if err != nil {
				return fmt.Errorf("rebuild %s: %w", args[0], err)
			}
			if asJSON {
				return printProtoJSON(cmd.OutOrStdout(), res.Msg)
			}
			id := res.Msg.BuildId
			fmt.Fprintln(cmd.OutOrStdout(), id)
			fmt.Fprintf(cmd.ErrOrStderr(), "build %s %s (rebuild of %s); follow it with: kiln builds logs -f %s\n", id, statusName(res.Msg.Status), args[0], id)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return cmd
}

// statusName is a BuildStatus as the CLI prints it: "queued", "running".
func statusName(s kilnv1.BuildStatus) string {
	name, ok := kilnv1.BuildStatus_name[int32(s)]
	if !ok || s == kilnv1.BuildStatus_BUILD_STATUS_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(name, "BUILD_STATUS_"))
}

// buildDuration is how long the build ran (so far, if it still runs);
// "" before it started.
func buildDuration(b *kilnv1.Build, now time.Time) string {
	if b.StartedAt == nil {
		return ""
	}
	end := now
	if b.FinishedAt != nil {
		end = b.FinishedAt.AsTime()
	}
	return formatDuration(end.Sub(b.StartedAt.AsTime()))
}

// formatDuration: "0.4s", "12.3s", "4m05s", "2h03m".
func formatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// relativeTime is how long before now ts was: "just now", "45s ago",
// "3m ago", "2h ago", "5d ago"; older than 30 days, the date.
func relativeTime(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return "-"
	}
	t := ts.AsTime()
	d := now.Sub(t)
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	case d < 30*24*time.Hour:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
	return t.Local().Format("2006-01-02")
}

var protoJSON = protojson.MarshalOptions{Multiline: true, Indent: "  "}

func printProtoJSON(w io.Writer, m proto.Message) error {
	b, err := protoJSON.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// printProtoJSONList prints the builds as one JSON array.
func printProtoJSONList(w io.Writer, builds []*kilnv1.Build) error {
	items := make([]json.RawMessage, 0, len(builds))
	for _, b := range builds {
		raw, err := protojson.Marshal(b)
		if err != nil {
			return err
		}
		items = append(items, raw)
	}
	flat, err := json.Marshal(items)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, flat, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}

// printProtoJSONLine prints m as one line of JSON.
func printProtoJSONLine(w io.Writer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	// protojson may put spaces in its output but never a newline without
	// Multiline; compact it anyway so each event is exactly one line.
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}
