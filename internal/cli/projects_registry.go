package cli

import (
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/retention"
)

// retentionSetter applies `--registry-retention` when it was given.
type retentionSetter func(cmd *cobra.Command, c client.Config, projectID string) error

// addRetentionFlag adds `--registry-retention` to `kiln projects update`;
// the returned func applies it (kiln.v1.RegistryAdminService).
func addRetentionFlag(cmd *cobra.Command) retentionSetter {
	var d time.Duration
	cmd.Flags().Var(cliflag.Retention{D: &d}, "registry-retention",
		"keep this project's saved images this long after they were pushed, e.g. 14d or 36h (0: the server's default)")
	return func(cmd *cobra.Command, c client.Config, projectID string) error {
		if !cmd.Flags().Changed("registry-retention") {
			return nil
		}
		res, err := c.RegistryAdmin().UpdateRegistrySettings(cmd.Context(), connect.NewRequest(&kilnv1.UpdateRegistrySettingsRequest{
			ProjectId: projectID, Retention: durationpb.New(d)}))
		if err != nil {
			return err
		}
		s := res.Msg.Settings
		note := ""
		if s.RetentionIsDefault {
			note = " (the server's default)"
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "registry retention of %s: %s%s\n", projectID, retention.Format(s.Retention.AsDuration()), note)
		return nil
	}
}
