package cli

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/internal/client"
)

func newCacheCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Manage a project's build cache",
		Example: `  kiln cache reset
  kiln cache reset --project k3v9x0ab2mqd`,
	}
	var project string
	reset := &cobra.Command{
		Use:   "reset [--project ID]",
		Short: "Empty a project's build cache: its next build starts cold",
		Long: `Empty the project's builder state (layer cache, cache mounts, content store).
Builds running in the project at that moment fail. Other projects keep their
caches. Needs an organization token or a token of the project itself.
The project comes from --project, KILN_PROJECT_ID / DEPOT_PROJECT_ID, or a
kiln.json / depot.json in the current directory or above.`,
		Example: `  kiln cache reset
  kiln cache reset --project k3v9x0ab2mqd
  KILN_PROJECT_ID=k3v9x0ab2mqd kiln cache reset`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := client.FindProject(project, ".")
			if err != nil {
				return err
			}
			c, err := g.config()
			if err != nil {
				return err
			}
			res, err := c.CLIProjects().ResetProjectCache(cmd.Context(), connect.NewRequest(&cliv1beta1.ResetProjectCacheRequest{ProjectId: id}))
			if err != nil {
				return fmt.Errorf("reset the cache of project %s: %w", id, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reset the cache of project %s (%s) in organization %s\n", res.Msg.Name, id, res.Msg.OrgName)
			return nil
		},
	}
	reset.Flags().StringVar(&project, "project", "", "project id (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json)")
	cmd.AddCommand(reset)
	return cmd
}
