package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
)

const trustLong = `Trust policies let CI jobs build in a project without a stored secret: the job
sends its CI provider's OIDC token as its kiln token (KILN_TOKEN or DEPOT_TOKEN),
kiln verifies it against the provider's published keys and, if its repository
or pipeline matches a policy of the project, lets the job build there. Managing
policies needs an organization token.

The token's audience must be the server's --oidc-audience (default "kiln"):
  GitHub Actions  permissions: id-token: write, then
                  KILN_TOKEN=$(curl -sH "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
                    "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=kiln" | jq -r .value)
  GitLab CI       id_tokens: { KILN_TOKEN: { aud: kiln } }
  CircleCI        KILN_TOKEN=$(circleci run oidc get --claims '{"aud":"kiln"}')
  Buildkite       KILN_TOKEN=$(buildkite-agent oidc request-token --audience kiln)

What a policy matches:
  --github OWNER/REPO          claims repository_owner and repository
  --gitlab GROUP[/SUB]/PROJECT claims namespace_path and project_path
  --circleci ORG_ID/PROJECT_ID claims oidc.circleci.com/org-id and project-id (UUIDs)
  --buildkite ORG/PIPELINE     claims organization_slug and pipeline_slug
Names are compared ignoring ASCII case; there are no wildcards.

GitHub and GitLab policies can also pin the provider's immutable ids (a
repository or organization deleted and recreated under the same name gets new
ones) and restrict the job. Each condition set must hold; a token without the
claim does not match:
  --repo-id ID       GitHub repository_id, GitLab project_id
  --owner-id ID      GitHub repository_owner_id, GitLab namespace_id
  --ref GLOB         ref: GitHub "refs/heads/main", "refs/tags/v*"; GitLab "main"
  --ref-type TYPE    ref_type: branch or tag
  --event NAME       GitHub event_name (push, workflow_dispatch, …), GitLab pipeline_source
  --environment ENV  environment
  --workflow GLOB    GitHub job_workflow_ref: "acme/app/.github/workflows/release.yml@*"
In a glob '*' stands for any characters, '/' included.

What an admitted job may do (--role):
  build    (default) build, and push and pull the project's images; drive its
           own builds with their build tokens. No deleting images, resetting
           the cache, sharing builds, or acting on other builds.
  project  a project token's rights in the project.`

func newTrustPoliciesCmd(g *globals) *cobra.Command {
	o := &trustOutput{g: g}
	cmd := &cobra.Command{
		Use:     "trust-policies",
		Aliases: []string{"trust-policy", "trust"},
		Short:   "Let CI jobs (GitHub, GitLab, CircleCI, Buildkite) build with their OIDC token",
		Long:    trustLong,
		Example: `  kiln trust-policies add --project k3v9x0ab2mqd --github acme/app
  kiln trust-policies add --project k3v9x0ab2mqd --github acme/app --repo-id 123456 --ref 'refs/heads/main' --event push
  kiln trust-policies add --project k3v9x0ab2mqd --gitlab acme/backend/api
  kiln trust-policies list --project k3v9x0ab2mqd
  kiln trust-policies remove --project k3v9x0ab2mqd tp_h2k9d0s8a1lq`,
	}
	cmd.PersistentFlags().StringVar(&o.project, "project", "", "project ID (env KILN_PROJECT_ID, or kiln.json)")
	cmd.PersistentFlags().BoolVar(&o.asJSON, "json", false, "print JSON")
	cmd.AddCommand(newTrustListCmd(o), newTrustAddCmd(o), newTrustRemoveCmd(o))
	return cmd
}

// trustOutput is what the trust-policies subcommands share: the project
// flag, --json, and how to print policies.
type trustOutput struct {
	g       *globals
	project string
	asJSON  bool
}

func (o *trustOutput) setup() (client.Config, string, error) {
	c, err := o.g.config()
	if err != nil {
		return c, "", err
	}
	proj, err := client.FindProject(o.project, ".")
	return c, proj, err
}

func (o *trustOutput) print(w io.Writer, tps ...*kilnv1.TrustPolicy) error {
	if o.asJSON {
		var out []json.RawMessage
		for _, tp := range tps {
			b, err := protojson.Marshal(tp)
			if err != nil {
				return err
			}
			out = append(out, b)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if len(tps) == 1 {
			return enc.Encode(out[0])
		}
		if out == nil {
			out = []json.RawMessage{}
		}
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROVIDER\tMATCHES\tCONDITIONS\tROLE\tCREATED")
	for _, tp := range tps {
		provider, match := describeTrustPolicy(tp)
		role := "build"
		if tp.Role == kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_PROJECT {
			role = "project"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", tp.TrustPolicyId, provider, match, describeConditions(tp), role,
			tp.CreatedAt.AsTime().Local().Format(time.RFC3339))
	}
	return tw.Flush()
}

func newTrustListCmd(o *trustOutput) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List a project's trust policies",
		Example: "  kiln trust-policies list --project k3v9x0ab2mqd --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, proj, err := o.setup()
			if err != nil {
				return err
			}
			res, err := c.TrustPolicies().ListTrustPolicies(cmd.Context(), connect.NewRequest(&kilnv1.ListTrustPoliciesRequest{ProjectId: proj}))
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), res.Msg.TrustPolicies...)
		},
	}
}

// trustAddFlags are `kiln trust-policies add`'s flags.
type trustAddFlags struct {
	github, gitlab, circleci, buildkite        string
	repoID, ownerID                            string
	ref, refType, event, environment, workflow string
	role                                       string
}

func newTrustAddCmd(o *trustOutput) *cobra.Command {
	var f trustAddFlags
	add := &cobra.Command{
		Use:   "add (--github OWNER/REPO | --gitlab GROUP/PROJECT | --circleci ORG_ID/PROJECT_ID | --buildkite ORG/PIPELINE)",
		Short: "Let the CI jobs of one repository or pipeline build in a project",
		Example: `  kiln trust-policies add --project k3v9x0ab2mqd --github acme/app
  kiln trust-policies add --project k3v9x0ab2mqd --github acme/app --repo-id 123456 --owner-id 7890 \
    --ref 'refs/heads/main' --event push --environment prod
  kiln trust-policies add --project k3v9x0ab2mqd --github acme/app --ref 'refs/tags/v*' --role project
  kiln trust-policies add --project k3v9x0ab2mqd --gitlab acme/backend/api
  kiln trust-policies add --project k3v9x0ab2mqd --circleci 6b1f3a4e-5c7d-4e8f-9a0b-1c2d3e4f5a6b/0c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f
  kiln trust-policies add --project k3v9x0ab2mqd --buildkite acme/deploy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := trustPolicyRequest(f)
			if err != nil {
				return err
			}
			c, proj, err := o.setup()
			if err != nil {
				return err
			}
			req.ProjectId = proj
			res, err := c.TrustPolicies().AddTrustPolicy(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), res.Msg.TrustPolicy)
		},
	}
	add.Flags().StringVar(&f.github, "github", "", "GitHub repository OWNER/REPO")
	add.Flags().StringVar(&f.gitlab, "gitlab", "", "GitLab project path GROUP[/SUBGROUP…]/PROJECT")
	add.Flags().StringVar(&f.circleci, "circleci", "", "CircleCI ORGANIZATION_ID/PROJECT_ID (UUIDs, from the organization's and project's settings)")
	add.Flags().StringVar(&f.buildkite, "buildkite", "", "Buildkite ORGANIZATION_SLUG/PIPELINE_SLUG")
	add.Flags().StringVar(&f.repoID, "repo-id", "", "pin GitHub's repository_id or GitLab's project_id")
	add.Flags().StringVar(&f.ownerID, "owner-id", "", "pin GitHub's repository_owner_id or GitLab's namespace_id")
	add.Flags().StringVar(&f.ref, "ref", "", "admit jobs of this ref only (a glob: 'refs/heads/main', 'refs/tags/v*')")
	add.Flags().StringVar(&f.refType, "ref-type", "", "admit jobs of this ref type only: branch or tag")
	add.Flags().StringVar(&f.event, "event", "", "admit jobs of this event only (GitHub event_name, GitLab pipeline_source)")
	add.Flags().StringVar(&f.environment, "environment", "", "admit jobs of this deployment environment only")
	add.Flags().StringVar(&f.workflow, "workflow", "", "admit jobs of this GitHub workflow only (job_workflow_ref, a glob)")
	add.Flags().StringVar(&f.role, "role", "build", "what admitted jobs may do: build (build, push, pull) or project (a project token's rights)")
	return add
}

func newTrustRemoveCmd(o *trustOutput) *cobra.Command {
	return &cobra.Command{
		Use:     "remove ID",
		Aliases: []string{"rm", "delete"},
		Short:   "Remove a trust policy; jobs it admitted are refused from their next request",
		Example: "  kiln trust-policies remove --project k3v9x0ab2mqd tp_h2k9d0s8a1lq",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, proj, err := o.setup()
			if err != nil {
				return err
			}
			if _, err := c.TrustPolicies().RemoveTrustPolicy(cmd.Context(), connect.NewRequest(&kilnv1.RemoveTrustPolicyRequest{
				ProjectId: proj, TrustPolicyId: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed trust policy %s\n", args[0])
			return nil
		},
	}
}

// trustPolicyRequest builds an AddTrustPolicyRequest from exactly one of
// the provider flags. Field syntax is checked by the server; here only the
// shape A/B.
func trustPolicyRequest(f trustAddFlags) (*kilnv1.AddTrustPolicyRequest, error) {
	github, gitlab, circleci, buildkite := f.github, f.gitlab, f.circleci, f.buildkite
	set := 0
	for _, v := range []string{github, gitlab, circleci, buildkite} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return nil, errors.New("pass exactly one of --github OWNER/REPO, --gitlab GROUP/PROJECT, --circleci ORG_ID/PROJECT_ID, --buildkite ORG/PIPELINE")
	}
	pair := func(flag, v, want string) (string, string, error) {
		a, b, ok := strings.Cut(v, "/")
		if !ok || a == "" || b == "" || strings.Contains(b, "/") {
			return "", "", fmt.Errorf("--%s %q: want %s", flag, v, want)
		}
		return a, b, nil
	}
	req := &kilnv1.AddTrustPolicyRequest{}
	switch {
	case github != "":
		owner, repo, err := pair("github", github, "OWNER/REPO")
		if err != nil {
			return nil, err
		}
		// Depot's convention: the repository without its owner.
		req.Provider = &kilnv1.AddTrustPolicyRequest_Github{Github: &kilnv1.TrustPolicy_GitHub{RepositoryOwner: owner, Repository: repo,
			RepositoryId: f.repoID, RepositoryOwnerId: f.ownerID}}
	case gitlab != "":
		i := strings.LastIndex(gitlab, "/")
		if i <= 0 || i == len(gitlab)-1 {
			return nil, fmt.Errorf("--gitlab %q: want GROUP[/SUBGROUP…]/PROJECT", gitlab)
		}
		req.Provider = &kilnv1.AddTrustPolicyRequest_Gitlab{Gitlab: &kilnv1.TrustPolicy_GitLab{NamespacePath: gitlab[:i], ProjectPath: gitlab,
			ProjectId: f.repoID, NamespaceId: f.ownerID}}
	case circleci != "":
		org, proj, err := pair("circleci", circleci, "ORGANIZATION_ID/PROJECT_ID")
		if err != nil {
			return nil, err
		}
		req.Provider = &kilnv1.AddTrustPolicyRequest_Circleci{Circleci: &kilnv1.TrustPolicy_CircleCI{OrganizationUuid: org, ProjectUuid: proj}}
	default:
		org, pipeline, err := pair("buildkite", buildkite, "ORGANIZATION_SLUG/PIPELINE_SLUG")
		if err != nil {
			return nil, err
		}
		req.Provider = &kilnv1.AddTrustPolicyRequest_Buildkite{Buildkite: &kilnv1.TrustPolicy_Buildkite{OrganizationSlug: org, PipelineSlug: pipeline}}
	}
	if (f.repoID != "" || f.ownerID != "") && github == "" && gitlab == "" {
		return nil, errors.New("--repo-id and --owner-id apply only to --github and --gitlab (their repository and owner ids)")
	}
	if c := (kilnv1.TrustPolicy_Conditions{Ref: f.ref, RefType: f.refType, Event: f.event, Environment: f.environment,
		Workflow: f.workflow}); c.Ref+c.RefType+c.Event+c.Environment+c.Workflow != "" {
		req.Conditions = &c
	}
	switch f.role {
	case "build", "":
		req.Role = kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_BUILD
	case "project":
		req.Role = kilnv1.TrustPolicyRole_TRUST_POLICY_ROLE_PROJECT
	default:
		return nil, fmt.Errorf("--role %q: want build (the default) or project", f.role)
	}
	return req, nil
}

// describeConditions lists what a policy pins and restricts, as the add
// flags spell it ("-" for nothing).
func describeConditions(tp *kilnv1.TrustPolicy) string {
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+"="+v)
		}
	}
	if gh := tp.GetGithub(); gh != nil {
		add("repo-id", gh.RepositoryId)
		add("owner-id", gh.RepositoryOwnerId)
	}
	if gl := tp.GetGitlab(); gl != nil {
		add("repo-id", gl.ProjectId)
		add("owner-id", gl.NamespaceId)
	}
	if c := tp.Conditions; c != nil {
		add("ref", c.Ref)
		add("ref-type", c.RefType)
		add("event", c.Event)
		add("environment", c.Environment)
		add("workflow", c.Workflow)
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// describeTrustPolicy says what a policy matches, as the add flags spell it.
func describeTrustPolicy(tp *kilnv1.TrustPolicy) (provider, match string) {
	switch {
	case tp.GetGithub() != nil:
		repo := tp.GetGithub().Repository
		if !strings.Contains(repo, "/") {
			repo = tp.GetGithub().RepositoryOwner + "/" + repo
		}
		return "github", repo
	case tp.GetGitlab() != nil:
		return "gitlab", tp.GetGitlab().ProjectPath
	case tp.GetCircleci() != nil:
		return "circleci", tp.GetCircleci().OrganizationUuid + "/" + tp.GetCircleci().ProjectUuid
	case tp.GetBuildkite() != nil:
		return "buildkite", tp.GetBuildkite().OrganizationSlug + "/" + tp.GetBuildkite().PipelineSlug
	}
	return "?", ""
}
