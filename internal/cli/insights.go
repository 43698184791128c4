package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"

	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/steps"
	"github.com/kiln-dev/kiln/internal/units"
)

// A build's insights come from Depot's public API, which kiln serves for
// every build: depot.core.v1 GetBuild (cached and total steps, the time
// the cache saved) and depot.build.v1 GetBuildSteps (the steps as the
// builder recorded them). Which steps count is steps.Counted, the rule
// the server counts by.

// buildStats is what `kiln builds get` and `kiln builds insights` show of
// a build's steps.
type buildStats struct {
	Cached, Total int
	Saved         time.Duration
}

// statsOf reads a build's step counts and saved time.
func statsOf(ctx context.Context, c client.Config, id string) (buildStats, error) {
	res, err := c.CoreBuilds().GetBuild(ctx, connect.NewRequest(&corev1.GetBuildRequest{BuildId: id}))
	if err != nil {
		return buildStats{}, fmt.Errorf("get build %s: %w", id, err)
	}
	b := res.Msg.GetBuild()
	return buildStats{Cached: int(b.GetCachedSteps()), Total: int(b.GetTotalSteps()),
		Saved: time.Duration(b.GetSavedDurationSeconds()) * time.Second}, nil
}

// buildInsights is a build's step counts, its counted steps and what its
// builder used.
type buildInsights struct {
	stats     buildStats
	steps     []*buildv1.GetBuildStepsResponse_BuildStep
	resources *kilnv1.GetBuildResourcesResponse
}

// insightsOf reads a build's step counts, its counted steps and its
// builder's resource samples and events.
func insightsOf(ctx context.Context, c client.Config, id string) (*buildInsights, error) {
	st, err := statsOf(ctx, c, id)
	if err != nil {
		return nil, err
	}
	res, err := c.PublicBuilds().GetBuildSteps(ctx, connect.NewRequest(&buildv1.GetBuildStepsRequest{BuildId: id}))
	if err != nil {
		return nil, fmt.Errorf("get the steps of build %s: %w", id, err)
	}
	ins := &buildInsights{stats: st, steps: steps.Counted(res.Msg.GetBuildSteps(), (*buildv1.GetBuildStepsResponse_BuildStep).GetName)}
	rr, err := c.SourceBuilds().GetBuildResources(ctx, connect.NewRequest(&kilnv1.GetBuildResourcesRequest{BuildId: id}))
	switch {
	case connect.CodeOf(err) == connect.CodeUnimplemented: // a server from before resource samples
	case err != nil:
		return nil, fmt.Errorf("get the resources of build %s: %w", id, err)
	default:
		ins.resources = rr.Msg
	}
	return ins, nil
}

// resourceLines are `kiln builds get`'s lines on what the builder used:
// peak CPU and memory (against its limit) and every event, e.g.
// "cpu: peak 1.8 cores", "memory: peak 412.0 MiB of 4.0 GiB",
// "event: oom_kill at 12:03:04: …". None without samples or events.
func (ins *buildInsights) resourceLines() [][2]string {
	if ins == nil || ins.resources == nil {
		return nil
	}
	var cpu float64
	var mem, limit int64
	for _, s := range ins.resources.Samples {
		cpu = max(cpu, s.CpuCores)
		mem = max(mem, s.MemoryBytes, s.MemoryPeakBytes)
		limit = max(limit, s.MemoryLimitBytes)
	}
	var out [][2]string
	if len(ins.resources.Samples) > 0 {
		out = append(out, [2]string{"cpu", fmt.Sprintf("peak %.1f cores (the builder's, shared by builds running on it at once)", cpu)})
		m := "peak " + units.Bytes(mem)
		if limit > 0 {
			m += fmt.Sprintf(" of %s (%.0f%%)", units.Bytes(limit), 100*float64(mem)/float64(limit))
		}
		out = append(out, [2]string{"memory", m})
	}
	for _, e := range ins.resources.Events {
		out = append(out, [2]string{"event", fmt.Sprintf("%s at %s: %s", e.Kind, e.At.AsTime().Local().Format(time.TimeOnly), e.Message)})
	}
	return out
}

// printSteps prints the counted steps as a table, the slowest first
// (nothing for a nil ins or a build with none).
func (ins *buildInsights) printSteps(w io.Writer, now time.Time) error {
	if ins == nil || len(ins.steps) == 0 {
		return nil
	}
	took := func(s *buildv1.GetBuildStepsResponse_BuildStep) time.Duration {
		if s.GetStartedAt() == nil {
			return 0
		}
		end := now
		if s.GetCompletedAt() != nil {
			end = s.GetCompletedAt().AsTime()
		}
		return max(end.Sub(s.GetStartedAt().AsTime()), 0)
	}
	sorted := slices.Clone(ins.steps)
	slices.SortStableFunc(sorted, func(a, b *buildv1.GetBuildStepsResponse_BuildStep) int { return cmp.Compare(took(b), took(a)) })
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP (slowest first)\tRESULT\tDURATION")
	for _, s := range sorted {
		result := "executed"
		switch {
		case s.Error != nil:
			result = "failed"
		case s.GetCacheState() == buildv1.GetBuildStepsResponse_BuildStep_CACHE_STATE_CACHED:
			result = "cached"
		case s.GetStartedAt() == nil:
			result = "not run"
		case s.GetCompletedAt() == nil:
			result = "running"
		}
		d := "-"
		if s.GetStartedAt() != nil {
			d = formatDuration(took(s))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", clip(s.GetName(), 72), result, d)
	}
	return tw.Flush()
}

// stepSummary: "12 (9 cached, about 34.0s saved)", "none counted".
func stepSummary(st buildStats) string {
	if st.Total == 0 {
		return "none counted (no Dockerfile steps recorded)"
	}
	s := fmt.Sprintf("%d (%d cached", st.Total, st.Cached)
	if st.Saved > 0 {
		s += ", about " + formatDuration(st.Saved) + " saved"
	}
	return s + ")"
}

// clip shortens s to n runes with an ellipsis.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func newBuildsInsightsCmd(g *globals, bp *buildsProject) *cobra.Command {
	var customer string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "insights",
		Short: "How a project's last builds went: durations, cache hit rate, time saved",
		Long: `Show a project's last builds (30 unless --limit) with their durations and how
many of their Dockerfile steps the cache answered, then the median and p90
duration, the cache hit rate over all their steps and the time the cache saved.
The project is --project, the platform customer's with --customer, or
KILN_PROJECT_ID / kiln.json. 'kiln builds get BUILD_ID' shows one build's steps.`,
		Example: `  kiln builds insights
  kiln builds insights --project k3v9x0ab2mqd --limit 100
  kiln builds insights --customer acme-42 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 || limit > 1000 {
				return fmt.Errorf("--limit %d: must be between 1 and 1000: %w", limit, errdefs.ErrInvalid)
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
			rows, err := insightRows(cmd.Context(), c, builds)
			if err != nil {
				return err
			}
			sum := summarize(rows)
			if asJSON {
				return printJSON(cmd.OutOrStdout(), struct {
					Builds  []insightRow   `json:"builds"`
					Summary insightSummary `json:"summary"`
				}{rows, sum})
			}
			return printInsights(cmd.OutOrStdout(), rows, sum, time.Now())
		},
	}
	cmd.Flags().StringVar(&customer, "customer", "", "the platform customer whose project to show")
	cmd.Flags().IntVar(&limit, "limit", 30, "the last this many builds")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// insightRow is one build of `kiln builds insights`.
type insightRow struct {
	BuildID         string    `json:"build_id"`
	Kind            string    `json:"kind"`
	Status          string    `json:"status"`
	CreatedAt       time.Time `json:"created_at"`
	DurationSeconds float64   `json:"duration_seconds,omitempty"` // finished builds only
	CachedSteps     int       `json:"cached_steps"`
	TotalSteps      int       `json:"total_steps"`
	SavedSeconds    float64   `json:"saved_seconds"`
	finished        bool
}

// insightRows reads every build's step counts, a few at a time.
func insightRows(ctx context.Context, c client.Config, builds []*kilnv1.Build) ([]insightRow, error) {
	rows := make([]insightRow, len(builds))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i, b := range builds {
		row := insightRow{BuildID: b.BuildId, Kind: b.Kind, Status: statusName(b.Status), CreatedAt: b.CreatedAt.AsTime()}
		if b.FinishedAt != nil && b.StartedAt != nil {
			row.finished = true
			row.DurationSeconds = max(b.FinishedAt.AsTime().Sub(b.StartedAt.AsTime()), 0).Seconds()
		}
		rows[i] = row
		g.Go(func() error {
			st, err := statsOf(gctx, c, b.BuildId)
			if connect.CodeOf(err) == connect.CodeNotFound {
				return nil // deleted (retention) since the list: no counts
			}
			if err != nil {
				return err
			}
			rows[i].CachedSteps, rows[i].TotalSteps, rows[i].SavedSeconds = st.Cached, st.Total, st.Saved.Seconds()
			return nil
		})
	}
	return rows, g.Wait()
}

// insightSummary sums up the rows: durations over finished builds, the
// hit rate over every counted step.
type insightSummary struct {
	Builds          int     `json:"builds"`
	Finished        int     `json:"finished"`
	MedianSeconds   float64 `json:"median_duration_seconds"`
	P90Seconds      float64 `json:"p90_duration_seconds"`
	CachedSteps     int     `json:"cached_steps"`
	TotalSteps      int     `json:"total_steps"`
	CacheHitRate    float64 `json:"cache_hit_rate"` // cached / total steps, 0 with no steps
	SavedSeconds    float64 `json:"saved_seconds"`
	durationsSorted []float64
}

func summarize(rows []insightRow) insightSummary {
	s := insightSummary{Builds: len(rows)}
	for _, r := range rows {
		if r.finished {
			s.Finished++
			s.durationsSorted = append(s.durationsSorted, r.DurationSeconds)
		}
		s.CachedSteps += r.CachedSteps
		s.TotalSteps += r.TotalSteps
		s.SavedSeconds += r.SavedSeconds
	}
	slices.Sort(s.durationsSorted)
	s.MedianSeconds = percentile(s.durationsSorted, 0.5)
	s.P90Seconds = percentile(s.durationsSorted, 0.9)
	if s.TotalSteps > 0 {
		s.CacheHitRate = float64(s.CachedSteps) / float64(s.TotalSteps)
	}
	return s
}

// percentile is the nearest-rank percentile of sorted values; 0 for none.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func printInsights(w io.Writer, rows []insightRow, s insightSummary, now time.Time) error {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no builds yet")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUILD ID\tKIND\tSTATUS\tCREATED\tDURATION\tSTEPS CACHED")
	for _, r := range rows {
		d := "-"
		if r.finished {
			d = formatDuration(seconds(r.DurationSeconds))
		}
		cached := "-"
		if r.TotalSteps > 0 {
			cached = fmt.Sprintf("%d/%d", r.CachedSteps, r.TotalSteps)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.BuildID, orDash(r.Kind), r.Status,
			relativeTime(timestamppb.New(r.CreatedAt), now), d, cached)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d builds", s.Builds)
	if s.Finished > 0 {
		fmt.Fprintf(w, "; %d finished: duration median %s, p90 %s", s.Finished,
			formatDuration(seconds(s.MedianSeconds)), formatDuration(seconds(s.P90Seconds)))
	}
	fmt.Fprintln(w)
	if s.TotalSteps == 0 {
		fmt.Fprintln(w, "cache: no Dockerfile steps recorded")
		return nil
	}
	fmt.Fprintf(w, "cache: %.0f%% of steps cached (%d of %d)", 100*s.CacheHitRate, s.CachedSteps, s.TotalSteps)
	if s.SavedSeconds > 0 {
		fmt.Fprintf(w, ", about %s saved", formatDuration(seconds(s.SavedSeconds)))
	}
	fmt.Fprintln(w)
	return nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// printJSON prints v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
