// Package cli holds kiln's client commands (cobra). They talk to a kiln
// server through internal/client and drive builds through internal/engine.
// It must not import server code (internal/server and the domain packages
// behind it): `kiln serve` lives in cmd/kiln, which adds it to NewRoot's
// tree. Only this package and cmd/ print.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/kiln-dev/kiln/internal/client"
)

// Version is set at link time (-X github.com/kiln-dev/kiln/internal/cli.Version=…).
var Version = "dev"

// globals are the flags every client command shares.
type globals struct {
	apiURL string
	token  string
}

func (g *globals) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&g.apiURL, "api-url", "", "kiln API URL (env KILN_API_URL, DEPOT_API_URL; default "+client.DefaultAPIURL+")")
	cmd.PersistentFlags().StringVar(&g.token, "token", "", "API token (env KILN_TOKEN, DEPOT_TOKEN; or run 'kiln login')")
}

func (g *globals) config() (client.Config, error) { return client.Resolve(g.apiURL, g.token) }

// Config resolves the server and token for cmd, a command added to
// NewRoot's tree from outside this package, from the root's --api-url and
// --token and the usual environment and login file.
func Config(cmd *cobra.Command) (client.Config, error) {
	apiURL, _ := cmd.Flags().GetString("api-url")
	token, _ := cmd.Flags().GetString("token")
	return client.Resolve(apiURL, token)
}

// NewRoot builds the kiln command tree; extra commands (cmd/kiln's `kiln
// serve`) are added to the root beside the client commands.
func NewRoot(extra ...*cobra.Command) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "kiln",
		Short: "Self-hosted remote container builds with a persistent per-project cache",
		Long: `kiln runs BuildKit builders per project with an isolated, persistent layer cache,
and speaks Depot's API so the depot CLI and depot-go work against it too.

Start a server with 'kiln serve', then build with 'kiln build'.`,
		Example: `  kiln serve --data /var/lib/kiln
  kiln projects create my-app
  kiln build --project <id> -o type=oci,dest=out.tar .`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.register(root)
	root.AddCommand(extra...)
	root.AddCommand(newBuildCmd(g), newProjectsCmd(g), newLoginCmd(g), newVersionCmd())
	root.AddCommand(newDoctorCmd(g), newConfigureDockerCmd())
	root.AddCommand(newCacheCmd(g))
	root.AddCommand(newTrustPoliciesCmd(g))
	root.AddCommand(newAuditCmd(g))
	root.AddCommand(newTokensCmd(g))
	root.AddCommand(newPullCmd(g), newPushCmd(g))
	root.AddCommand(newBuildsCmd(g))
	return root
}

// Main runs the CLI, with extra commands added to the root (NewRoot), and
// returns the process exit code.
func Main(args []string, stdout, stderr io.Writer, extra ...*cobra.Command) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	args, code, handled := dockerPluginMain(args, stdout, stderr)
	if handled {
		return code
	}
	root := NewRoot(extra...)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "kiln: %s\n", describe(err))
		var ee exitError
		if errors.As(err, &ee) {
			return int(ee)
		}
		return 1
	}
	return 0
}

type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// describe turns API errors into one readable line with a next step.
func describe(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err.Error()
	}
	msg := ce.Message()
	switch ce.Code() {
	case connect.CodeUnauthenticated:
		return msg + " (check --token / KILN_TOKEN)"
	case connect.CodeUnavailable:
		if msg == "" {
			msg = "server unavailable"
		}
		if ue := (*client.UnreachableError)(nil); errors.As(err, &ue) { // it names the URL and what to do
			return ue.Error()
		}
		return msg + " (is `kiln serve` running at the --api-url?)"
	case connect.CodeUnknown, connect.CodeInternal:
		if msg == "" {
			return err.Error()
		}
	}
	return msg
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print kiln's version",
		Example: "  kiln version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "kiln %s\n", Version)
			return nil
		},
	}
}

// exactArgs is cobra.ExactArgs saying what buildx says: what is missing,
// where the help is, the usage line, the command's purpose and its first
// example.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		noun := "arguments"
		if n == 1 {
			noun = "argument"
		}
		msg := fmt.Sprintf("%q requires exactly %d %s (got %d).\nSee '%s --help'.\n\nUsage:  %s\n\n%s",
			cmd.CommandPath(), n, noun, len(args), cmd.CommandPath(), strings.TrimSuffix(cmd.UseLine(), " [flags]"), cmd.Short)
		if ex := strings.TrimSpace(strings.SplitN(cmd.Example, "\n", 2)[0]); ex != "" {
			msg += "\n\nExample:\n  " + ex
		}
		return errors.New(msg)
	}
}
