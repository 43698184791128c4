package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"github.com/spf13/cobra"
)

func newProjectsCmd(g *globals) *cobra.Command {
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:     "projects",
		Aliases: []string{"project"},
		Short:   "Manage projects (each has its own builders and isolated cache)",
		Example: `  kiln projects list
  kiln projects create my-app --keep-gb 20 --keep-days 7
  kiln projects get k3v9x0ab2mqd
  kiln projects update k3v9x0ab2mqd --name renamed
  kiln projects delete k3v9x0ab2mqd`,
	}
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.PersistentFlags().BoolVarP(&quiet, "quiet", "q", false, "print only project IDs")
	print := func(w io.Writer, projects ...*corev1.Project) error {
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
				return enc.Encode(projects[0])
			}
			return enc.Encode(projects)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tKEEP GB\tKEEP DAYS\tCREATED")
		for _, p := range projects {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", p.ProjectId, p.Name, p.GetCachePolicy().GetKeepGb(), p.GetCachePolicy().GetKeepDays(),
				p.CreatedAt.AsTime().Local().Format(time.RFC3339))
		}
		return tw.Flush()
	}

	cmd.AddCommand(&cobra.Command{
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
			return print(cmd.OutOrStdout(), res.Msg.Projects...)
		},
	})

	var keepGB, keepDays int32
	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Create a project",
		Example: "  kiln projects create my-app --keep-gb 50 --keep-days 14",
		Args:    cobra.ExactArgs(1),
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
			return print(cmd.OutOrStdout(), res.Msg.Project)
		},
	}
	create.Flags().Int32Var(&keepGB, "keep-gb", 0, "cache size cap in GB (0: server default)")
	create.Flags().Int32Var(&keepDays, "keep-days", 0, "drop cache unused for this many days (0: server default)")
	cmd.AddCommand(create)

	cmd.AddCommand(&cobra.Command{
		Use:     "get ID",
		Short:   "Show a project",
		Example: "  kiln projects get k3v9x0ab2mqd",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			res, err := c.Projects().GetProject(cmd.Context(), connect.NewRequest(&corev1.GetProjectRequest{ProjectId: args[0]}))
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), res.Msg.Project)
		},
	})

	var name string
	var upGB, upDays int32
	var setRetention retentionSetter
	update := &cobra.Command{
		Use:     "update ID",
		Short:   "Rename a project or change its cache policy or registry retention",
		Example: "  kiln projects update k3v9x0ab2mqd --name web --keep-gb 20\n  kiln projects update k3v9x0ab2mqd --registry-retention 14d",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
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
			return print(cmd.OutOrStdout(), res.Msg.Project)
		},
	}
	update.Flags().StringVar(&name, "name", "", "new name")
	update.Flags().Int32Var(&upGB, "keep-gb", 0, "cache size cap in GB")
	update.Flags().Int32Var(&upDays, "keep-days", 0, "cache age cap in days")
	setRetention = addRetentionFlag(update)
	cmd.AddCommand(update)

	cmd.AddCommand(&cobra.Command{
		Use:     "delete ID",
		Short:   "Delete a project, its tokens, builds and cache",
		Example: "  kiln projects delete k3v9x0ab2mqd",
		Args:    cobra.ExactArgs(1),
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
	})
	return cmd
}
