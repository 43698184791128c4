package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
)

func newProjectsCmd(g *globals) *cobra.Command {
	out := &projectsOutput{}
	cmd := &cobra.Command{
		Use:     "projects",
		Aliases: []string{"project"},
		Short:   "Manage projects (each has its own builders and isolated cache)",
		Example: `  kiln projects list
  kiln projects create my-app --keep-gb 20 --keep-days 7
  kiln projects get k3v9x0ab2mqd
  kiln projects update k3v9x0ab2mqd --name renamed
  kiln projects update k3v9x0ab2mqd --egress-allow 10.9.0.0/16
  kiln projects delete k3v9x0ab2mqd`,
	}
	cmd.PersistentFlags().BoolVar(&out.asJSON, "json", false, "print JSON")
	cmd.PersistentFlags().BoolVarP(&out.quiet, "quiet", "q", false, "print only project IDs")
	cmd.AddCommand(newProjectsListCmd(g, out), newProjectsCreateCmd(g, out), newProjectsGetCmd(g, out),
		newProjectsUpdateCmd(g, out), newProjectsDeleteCmd(g))
	return cmd
}

// projectsOutput is how `kiln projects` subcommands print projects: the
// parent's persistent --json and --quiet flags.
type projectsOutput struct{ asJSON, quiet bool }

func (o *projectsOutput) print(w io.Writer, projects ...*corev1.Project) error {
	return printProjects(w, o.quiet, o.asJSON, nil, projects...)
}

// printOne shows one project with its egress allow-list (net: nil asks the
// server for it).
func (o *projectsOutput) printOne(cmd *cobra.Command, c client.Config, p *corev1.Project, net *kilnv1.ProjectNetwork) error {
	if net == nil && !o.quiet {
		res, err := c.ProjectNetwork().GetProjectNetwork(cmd.Context(), connect.NewRequest(&kilnv1.GetProjectNetworkRequest{ProjectId: p.ProjectId}))
		switch {
		case connect.CodeOf(err) == connect.CodeUnimplemented: // an older server: no allow-list to show
		case err != nil:
			return err
		default:
			net = res.Msg.Network
		}
	}
	return printProjects(cmd.OutOrStdout(), o.quiet, o.asJSON, net, p)
}

func newProjectsListCmd(g *globals, out *projectsOutput) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List projects",
		Example: "  kiln projects list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			res, err := c.Projects().ListProjects(cmd.Context(), connect.NewRequest(&corev1.ListProjectsRequest{}))
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), res.Msg.Projects...)
		},
	}
}

func newProjectsCreateCmd(g *globals, out *projectsOutput) *cobra.Command {
	var keepGB, keepDays int32
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a project and print its id",
		Long: `Create a project and print its id alone on stdout (--json: the whole project),
so scripts can capture it; a hint for kiln.json goes to stderr (not with --quiet).`,
		Example: "  kiln projects create my-app --keep-gb 50 --keep-days 14\n  id=$(kiln projects create my-app) && echo \"{\\\"id\\\": \\\"$id\\\"}\" > kiln.json",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			res, err := c.Projects().CreateProject(cmd.Context(), connect.NewRequest(&corev1.CreateProjectRequest{
				Name: args[0], CachePolicy: &corev1.CachePolicy{KeepGb: keepGB, KeepDays: keepDays}}))
			if err != nil {
				return err
			}
			p := res.Msg.Project
			if out.asJSON {
				return out.print(cmd.OutOrStdout(), p)
			}
			// The id alone on stdout, for scripts (id=$(kiln projects create x));
			// what to do with it on stderr.
			fmt.Fprintln(cmd.OutOrStdout(), p.ProjectId)
			if !out.quiet {
				fmt.Fprintf(cmd.ErrOrStderr(), "created project %q; name it in a kiln.json: {\"id\": %q}\n", p.Name, p.ProjectId)
			}
			return nil
		},
	}
	cmd.Flags().Int32Var(&keepGB, "keep-gb", 0, "cache size cap in GB (0: server default)")
	cmd.Flags().Int32Var(&keepDays, "keep-days", 0, "drop cache unused for this many days (0: server default)")
	return cmd
}

func newProjectsGetCmd(g *globals, out *projectsOutput) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a project, with the private ranges its builds may reach",
		Long: `Show a project: its name, cache policy, creation time and egress
allow-list (EGRESS ALLOW: the private CIDRs its RUN steps may reach besides
public destinations; "none" when there are none).`,
		Example: "  kiln projects get k3v9x0ab2mqd\n  kiln projects get k3v9x0ab2mqd --json",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			res, err := c.Projects().GetProject(cmd.Context(), connect.NewRequest(&corev1.GetProjectRequest{ProjectId: args[0]}))
			if err != nil {
				return err
			}
			return out.printOne(cmd, c, res.Msg.Project, nil)
		},
	}
}

func newProjectsUpdateCmd(g *globals, out *projectsOutput) *cobra.Command {
	var name string
	var upGB, upDays int32
	var egress []string
	var setRetention retentionSetter
	cmd := &cobra.Command{
		Use:   "update ID",
		Short: "Rename a project or change its cache policy, registry retention or egress allow-list",
		Long: `Rename a project or change its cache policy, registry retention or egress
allow-list. Flags not given leave their setting as it is.

RUN steps run in a private network: they reach public destinations, but not
the builder host, loopback, cloud metadata (169.254.169.254), other builders
or private ranges (10/8, 172.16/12, 192.168/16, 100.64/10). --egress-allow lets
this project's builds reach private CIDRs too, such as a package mirror or a
registry on your network. It is repeatable (or comma-separated) and replaces
the whole list; --egress-allow none clears it. Each entry is a CIDR with no
bits set past its prefix length (10.9.0.0/16, fd00:9::/64, 10.9.4.2/32), at
most 32; 0.0.0.0/0 and ::/0 are refused (public destinations need no entry),
as is anything touching loopback, link-local or cloud metadata. Changing
the list needs an organization token and is recorded in the audit log.`,
		Example: `  kiln projects update k3v9x0ab2mqd --name web --keep-gb 20
  kiln projects update k3v9x0ab2mqd --registry-retention 14d
  kiln projects update k3v9x0ab2mqd --egress-allow 10.9.0.0/16 --egress-allow 192.168.7.10/32
  kiln projects update k3v9x0ab2mqd --egress-allow none`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			// The allow-list goes first: it is what the server most likely
			// refuses (a bad CIDR), before anything else has changed.
			var net *kilnv1.ProjectNetwork
			if cmd.Flags().Changed("egress-allow") {
				list, err := egressList(egress)
				if err != nil {
					return err
				}
				res, err := c.ProjectNetwork().SetEgressAllow(cmd.Context(), connect.NewRequest(&kilnv1.SetEgressAllowRequest{
					ProjectId: args[0], EgressAllow: list}))
				if err != nil {
					return err
				}
				net = res.Msg.Network
			}
			if err := setRetention(cmd, c, args[0]); err != nil {
				return err
			}
			req := &corev1.UpdateProjectRequest{ProjectId: args[0]}
			if cmd.Flags().Changed("name") {
				req.Name = &name
			}
			if cmd.Flags().Changed("keep-gb") || cmd.Flags().Changed("keep-days") {
				cur, err := c.Projects().GetProject(cmd.Context(), connect.NewRequest(&corev1.GetProjectRequest{ProjectId: args[0]}))
				if err != nil {
					return err
				}
				cp := cur.Msg.Project.GetCachePolicy()
				req.CachePolicy = &corev1.CachePolicy{KeepGb: cp.GetKeepGb(), KeepDays: cp.GetKeepDays()}
				if cmd.Flags().Changed("keep-gb") {
					req.CachePolicy.KeepGb = upGB
				}
				if cmd.Flags().Changed("keep-days") {
					req.CachePolicy.KeepDays = upDays
				}
			}
			res, err := c.Projects().UpdateProject(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			return out.printOne(cmd, c, res.Msg.Project, net)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "new name")
	cmd.Flags().Int32Var(&upGB, "keep-gb", 0, "cache size cap in GB")
	cmd.Flags().Int32Var(&upDays, "keep-days", 0, "cache age cap in days")
	cmd.Flags().StringSliceVar(&egress, "egress-allow", nil,
		"a private CIDR this project's RUN steps may reach (repeatable; replaces the list; \"none\" clears it)")
	setRetention = addRetentionFlag(cmd)
	return cmd
}

func newProjectsDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete ID",
		Short:   "Delete a project, its tokens, builds and cache",
		Example: "  kiln projects delete k3v9x0ab2mqd",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			if _, err := c.Projects().DeleteProject(cmd.Context(), connect.NewRequest(&corev1.DeleteProjectRequest{ProjectId: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted project %s\n", args[0])
			return nil
		},
	}
}

// egressList turns --egress-allow values into the list to send: "none"
// alone is the empty list.
func egressList(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		v = strings.TrimSpace(v)
		if strings.EqualFold(v, "none") {
			if len(values) > 1 {
				return nil, fmt.Errorf("--egress-allow none clears the list; it cannot be combined with CIDRs")
			}
			return []string{}, nil
		}
		if v == "" {
			return nil, fmt.Errorf("--egress-allow: empty value (use --egress-allow none to clear the list)")
		}
		out = append(out, v)
	}
	return out, nil
}

// printProjects prints projects as IDs (quiet), JSON or a table. With net
// (one project's network), the table has an EGRESS ALLOW column and the
// JSON an "egress_allow" field.
func printProjects(w io.Writer, quiet, asJSON bool, net *kilnv1.ProjectNetwork, projects ...*corev1.Project) error {
	if quiet {
		for _, p := range projects {
			fmt.Fprintln(w, p.ProjectId)
		}
		return nil
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if len(projects) == 1 {
			if net != nil {
				return enc.Encode(struct {
					*corev1.Project
					EgressAllow []string `json:"egress_allow"`
				}{projects[0], append([]string{}, net.EgressAllow...)})
			}
			return enc.Encode(projects[0])
		}
		return enc.Encode(projects)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := "ID\tNAME\tKEEP GB\tKEEP DAYS\tCREATED"
	if net != nil {
		header += "\tEGRESS ALLOW"
	}
	fmt.Fprintln(tw, header)
	for _, p := range projects {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s", p.ProjectId, p.Name, p.GetCachePolicy().GetKeepGb(), p.GetCachePolicy().GetKeepDays(),
			p.CreatedAt.AsTime().Local().Format(time.RFC3339))
		if net != nil {
			allow := "none"
			if len(net.EgressAllow) > 0 {
				allow = strings.Join(net.EgressAllow, ",")
			}
			fmt.Fprintf(tw, "\t%s", allow)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
