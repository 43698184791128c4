package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

var tokenKindNames = map[string]kilnv1.TokenKind{
	"project":      kilnv1.TokenKind_TOKEN_KIND_PROJECT,
	"pull":         kilnv1.TokenKind_TOKEN_KIND_PULL,
	"organization": kilnv1.TokenKind_TOKEN_KIND_ORGANIZATION,
	"org":          kilnv1.TokenKind_TOKEN_KIND_ORGANIZATION,
}

func newTokensCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "tokens",
		Aliases: []string{"token"},
		Short:   "Manage API tokens: project, pull (registry read-only) and organization tokens",
		Example: `  kiln tokens create --project k3v9x0ab2mqd --description "CI" --expires 720h
  kiln tokens create --project k3v9x0ab2mqd --kind pull --expires 1h
  kiln tokens create --kind organization --description "ops laptop"
  kiln tokens list --project k3v9x0ab2mqd
  kiln tokens list            # the organization's own tokens
  kiln tokens delete tok_abc123`,
	}

	cmd.AddCommand(newTokensCreateCmd(g), newTokensListCmd(g), newTokensUpdateCmd(g), newTokensDeleteCmd(g))
	return cmd
}

func newTokensCreateCmd(g *globals) *cobra.Command {
	var project, description, kind string
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a token; its secret is printed once",
		Example: `  kiln tokens create --project k3v9x0ab2mqd --description "GitLab CI" --expires 2160h
  kiln tokens create --project k3v9x0ab2mqd --kind pull --expires 1h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, ok := tokenKindNames[kind]
			if !ok {
				return fmt.Errorf("--kind %q: use project, pull or organization", kind)
			}
			if expires < 0 {
				return fmt.Errorf("--expires %s: must not be negative (0 means never)", expires)
			}
			if k != kilnv1.TokenKind_TOKEN_KIND_ORGANIZATION && project == "" {
				return fmt.Errorf("--project is required for a %s token", kind)
			}
			c, err := g.config()
			if err != nil {
				return err
			}
			req := &kilnv1.CreateTokenRequest{ProjectId: project, Description: description, Kind: k}
			if expires > 0 {
				req.Ttl = durationpb.New(expires)
			}
			res, err := c.Tokens().CreateToken(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Msg.Secret)
			exp := "never expires"
			if res.Msg.ExpiresAt != nil {
				exp = "expires " + res.Msg.ExpiresAt.AsTime().Local().Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "created %s token %s (%s); the secret above is shown only now\n", kind, res.Msg.TokenId, exp)
			return nil
		},
	}
	cmd.Flags().StringVar(&project, "project", "", "project of a project or pull token")
	cmd.Flags().StringVar(&description, "description", "", "what the token is for")
	cmd.Flags().StringVar(&kind, "kind", "project", "project | pull | organization")
	cmd.Flags().DurationVar(&expires, "expires", 0, "lifetime, e.g. 24h or 720h (0: never expires)")
	return cmd
}

func newTokensListCmd(g *globals) *cobra.Command {
	var listProject string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List a project's tokens, or the organization's own",
		Example: "  kiln tokens list --project k3v9x0ab2mqd\n  kiln tokens list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			res, err := c.Tokens().ListTokens(cmd.Context(), connect.NewRequest(&kilnv1.ListTokensRequest{ProjectId: listProject}))
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res.Msg.Tokens)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tDESCRIPTION\tCREATED\tEXPIRES")
			for _, t := range res.Msg.Tokens {
				exp := "never"
				if t.ExpiresAt != nil {
					exp = t.ExpiresAt.AsTime().Local().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.TokenId, kindLabel(t.Kind), t.Description,
					t.CreatedAt.AsTime().Local().Format(time.RFC3339), exp)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&listProject, "project", "", "project whose tokens to list (default: the organization's tokens)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newTokensUpdateCmd(g *globals) *cobra.Command {
	var newDesc string
	cmd := &cobra.Command{
		Use:     "update TOKEN_ID --description TEXT",
		Short:   "Change a token's description",
		Example: `  kiln tokens update tok_abc123 --description "CI (rotated)"`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			_, err = c.Projects().UpdateToken(cmd.Context(), connect.NewRequest(&corev1.UpdateTokenRequest{TokenId: args[0], Description: newDesc}))
			return err
		},
	}
	cmd.Flags().StringVar(&newDesc, "description", "", "new description")
	return cmd
}

func newTokensDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete TOKEN_ID",
		Short:   "Revoke a token: the next request with it is refused",
		Example: "  kiln tokens delete tok_abc123",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.config()
			if err != nil {
				return err
			}
			if _, err := c.Projects().DeleteToken(cmd.Context(), connect.NewRequest(&corev1.DeleteTokenRequest{TokenId: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted token %s\n", args[0])
			return nil
		},
	}
}

func kindLabel(k kilnv1.TokenKind) string {
	switch k {
	case kilnv1.TokenKind_TOKEN_KIND_PULL:
		return "pull"
	case kilnv1.TokenKind_TOKEN_KIND_ORGANIZATION:
		return "organization"
	}
	return "project"
}
