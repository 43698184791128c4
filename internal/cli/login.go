package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/retry"
)

func newLoginCmd(g *globals) *cobra.Command {
	var approve, deny string
	cmd := &cobra.Command{
		Use:   "login [--token TOKEN | --approve ID | --deny ID] [--api-url URL]",
		Short: "Log in to a kiln server (device login), or approve someone else's login",
		Long: `Without flags, 'kiln login' asks the server for a device login: it prints a
login code, an approve URL and the 'kiln login --approve' command for an
administrator, waits until the login is approved (at most 10 minutes), and
saves the API URL and the new organization token it receives (valid 30 days).

With --token it checks and saves that token instead.

With --approve (or --deny) an administrator decides someone else's pending
login, using their own organization token (--token, KILN_TOKEN or their saved
login); nothing is saved. ID is the approval id or the whole approve URL.`,
		Example: `  kiln login --api-url https://kiln.example.com
  kiln login --token "$(cat /var/lib/kiln/admin.token)"
  kiln login --approve k3f7bw66ck9uu5hpt7bswsguzc
  kiln login --deny https://kiln.example.com/login/k3f7bw66ck9uu5hpt7bswsguzc`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case approve != "" && deny != "":
				return errors.New("--approve and --deny exclude each other")
			case approve != "" || deny != "":
				return decideLogin(cmd, g, approve, deny)
			case g.token != "":
				return saveTokenLogin(cmd, g)
			}
			return deviceLogin(cmd, g)
		},
	}
	cmd.Flags().StringVar(&approve, "approve", "", "approve the pending login with this approval id (or approve URL)")
	cmd.Flags().StringVar(&deny, "deny", "", "deny the pending login with this approval id (or approve URL)")
	return cmd
}

// saveTokenLogin checks a token against the server and saves it.
func saveTokenLogin(cmd *cobra.Command, g *globals) error {
	c, err := client.Resolve(g.apiURL, g.token)
	if err != nil {
		return err
	}
	if _, err := c.Projects().ListProjects(cmd.Context(), connect.NewRequest(&corev1.ListProjectsRequest{})); err != nil {
		return fmt.Errorf("token check against %s failed: %w", c.APIURL, err)
	}
	if err := client.SaveLogin(client.Login{APIURL: c.APIURL, Token: c.Token}); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s (saved in %s)\n", c.APIURL, client.LoginFile())
	return nil
}

// deviceLogin runs depot.cli.v1beta1's StartLogin → FinishLogin. It talks
// without a token; what it tells the user goes to stderr, so stdout stays
// for the one result line.
func deviceLogin(cmd *cobra.Command, g *globals) error {
	apiURL, err := client.ResolveAPIURL(g.apiURL)
	if err != nil {
		return err
	}
	svc := client.LoginService(apiURL)
	started, err := svc.StartLogin(cmd.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{}))
	if err != nil {
		return fmt.Errorf("start login at %s: %w", apiURL, err)
	}
	approvalID := approvalIDOf(started.Msg.ApproveUrl)
	w := cmd.ErrOrStderr()
	if code := loginCode(approvalID); code != "" {
		fmt.Fprintf(w, "Login code: %s\n", code)
	}
	fmt.Fprintf(w, "Ask an administrator of %s to approve this login, at\n  %s\n", apiURL, started.Msg.ApproveUrl)
	if approvalID != "" {
		fmt.Fprintf(w, "or with\n  kiln login --approve %s\n", approvalID)
	}
	fmt.Fprintln(w, "Waiting for approval (the request expires in 10 minutes; Ctrl-C to give up)...")

	// The login outlives a server restart: wait again while the server is
	// unavailable, until the login would have expired anyway.
	giveUp := time.Now().Add(11 * time.Minute)
	waitAgain := func(err error) bool {
		return connect.CodeOf(err) == connect.CodeUnavailable && !time.Now().After(giveUp)
	}
	policy := retry.Policy{Attempts: -1, Delay: time.Second, MaxDelay: 10 * time.Second, Retryable: waitAgain}
	token, err := retry.Value(cmd.Context(), policy, func(context.Context) (string, error) {
		token, err := finishLogin(cmd, svc, started.Msg.Id)
		if waitAgain(err) {
			fmt.Fprintf(w, "%s; still waiting...\n", describe(err))
		}
		return token, err
	})
	if err != nil && waitAgain(err) && cmd.Context().Err() != nil {
		return cmd.Context().Err()
	}
	if err != nil {
		return err
	}
	if err := client.SaveLogin(client.Login{APIURL: apiURL, Token: token}); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s (saved in %s)\n", apiURL, client.LoginFile())
	return nil
}

// finishLogin waits on one FinishLogin stream for the token.
func finishLogin(cmd *cobra.Command, svc cliv1beta1connect.LoginServiceClient, id string) (string, error) {
	stream, err := svc.FinishLogin(cmd.Context(), connect.NewRequest(&cliv1beta1.FinishLoginRequest{Id: id}))
	if err != nil {
		return "", err
	}
	defer stream.Close()
	for stream.Receive() {
		if token := stream.Msg().Token; token != "" {
			return token, nil
		}
	}
	if err := stream.Err(); err != nil {
		return "", err
	}
	return "", errors.New("the server ended the login without a token")
}

// approvalIDOf is the last path segment of a kiln approve URL; "" when the
// URL has another shape (another server's).
func approvalIDOf(approveURL string) string {
	u, err := url.Parse(approveURL)
	if err != nil || !strings.Contains(u.Path, "/login/") {
		return ""
	}
	return path.Base(u.Path)
}

// loginCode is the short code kiln's approval page shows for an approval
// id: its first eight letters, upper case, as ABCD-EFGH (internal/login).
func loginCode(approvalID string) string {
	if len(approvalID) < 8 {
		return ""
	}
	return strings.ToUpper(approvalID[:4] + "-" + approvalID[4:8])
}

// decideLogin approves or denies someone else's login with the caller's
// own (organization) token.
func decideLogin(cmd *cobra.Command, g *globals, approve, deny string) error {
	c, err := g.config()
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if deny != "" {
		res, err := c.LoginAdmin().DenyLogin(cmd.Context(), connect.NewRequest(&kilnv1.DenyLoginRequest{ApprovalId: deny}))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "denied login %s\n", res.Msg.Code)
		return nil
	}
	res, err := c.LoginAdmin().ApproveLogin(cmd.Context(), connect.NewRequest(&kilnv1.ApproveLoginRequest{ApprovalId: approve}))
	if err != nil {
		return err
	}
	m := res.Msg
	fmt.Fprintf(out, "approved login %s: the waiting client receives organization token %s (organization %s), valid until %s\n",
		m.Code, m.TokenId, m.OrgId, m.TokenExpiresAt.AsTime().Local().Format(time.RFC3339))
	return nil
}
