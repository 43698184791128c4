package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// parseSince reads --since: a duration back from now ("90m", "24h", "7d")
// or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 && n <= 36500 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("--since %q: want a duration like 1h, 30m or 7d, or an RFC 3339 time", s)
	}
	return now.Add(-d), nil
}

// formatDetail prints an event's detail as sorted key=value pairs, quoting
// values with spaces.
func formatDetail(d map[string]string) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := d[k]
		if v == "" || strings.ContainsAny(v, " \t\"=") {
			v = strconv.Quote(v)
		}
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newAuditCmd(g *globals) *cobra.Command {
	var since string
	var kinds []string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: tokens created and deleted, denied requests, trust-policy matches",
		Long: `Show the server's audit log, oldest first. Needs an organization token.

Kinds: token_created, token_deleted, denied (a request refused as
Unauthenticated or PermissionDenied), trust_policy_matched (a CI job's OIDC
token admitted by a project's trust policy; once per job and 10 minutes),
customer_project_created (a source build's customer got a project),
project_egress_changed (a project's --egress-allow list was replaced).
Requests with an unknown token
belong to no organization; they are shown to every organization's admins.
Events are kept for the server's --audit-retention (default 90 days).`,
		Example: `  kiln audit
  kiln audit --since 1h --kind denied
  kiln audit --since 7d --kind token_created --kind token_deleted
  kiln audit --since 2026-01-01T00:00:00Z --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			if limit <= 0 {
				return fmt.Errorf("--limit must be positive")
			}
			c, err := g.config()
			if err != nil {
				return err
			}
			req := &kilnv1.ListAuditEventsRequest{Kinds: kinds, PageSize: int32(min(limit, 1000))}
			if !from.IsZero() {
				req.Since = timestamppb.New(from)
			}
			var events []*kilnv1.AuditEvent
			for len(events) < limit {
				res, err := c.Audit().ListAuditEvents(cmd.Context(), connect.NewRequest(req))
				if err != nil {
					return err
				}
				events = append(events, res.Msg.Events...)
				if res.Msg.NextPageToken == "" {
					break
				}
				req.PageToken = res.Msg.NextPageToken
			}
			if len(events) > limit {
				events = events[:limit]
			}
			return printAudit(cmd.OutOrStdout(), events, asJSON)
		},
	}
	cmd.Flags().StringVar(&since, "since", "24h", `show events since this long ago (1h, 30m, 7d) or this RFC 3339 time; "" for all`)
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "only events of this kind (repeatable or comma-separated)")
	cmd.Flags().IntVar(&limit, "limit", 1000, "print at most this many events")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, one object per line")
	return cmd
}

func printAudit(w io.Writer, events []*kilnv1.AuditEvent, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, e := range events {
			if err := enc.Encode(map[string]any{"id": e.Id, "kind": e.Kind, "at": e.At.AsTime().Format(time.RFC3339Nano),
				"org_id": e.OrgId, "project_id": e.ProjectId, "actor": e.Actor, "detail": e.Detail}); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tACTOR\tPROJECT\tDETAIL")
	for _, e := range events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.At.AsTime().Local().Format(time.RFC3339), e.Kind, orDash(e.Actor), orDash(e.ProjectId), formatDetail(e.Detail))
	}
	return tw.Flush()
}
