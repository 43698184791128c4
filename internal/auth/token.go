package auth

import "time"

// TokenKind is what a stored token (or an OIDC principal) may reach.
type TokenKind string

// Token kinds.
const (
	TokenOrg     TokenKind = "org"
	TokenProject TokenKind = "project"
	TokenBuild   TokenKind = "build"
	// TokenOIDC marks a principal authenticated by a CI provider's OIDC
	// token matching a trust policy; such tokens are verified, never stored.
	TokenOIDC TokenKind = "oidc"
	// TokenPull reads one project's images from kiln's registry and
	// nothing else: no Connect API accepts it.
	TokenPull TokenKind = "pull"
)

// Token is a stored credential; the secret itself is never stored, only
// its SHA-256 (SecretHash).
type Token struct {
	ID          string
	Kind        TokenKind // TokenOrg, TokenProject, TokenBuild or TokenPull
	OrgID       string
	ProjectID   string // project, pull and build tokens
	BuildID     string // build tokens
	Description string
	SecretHash  string
	CreatedAt   time.Time
	ExpiresAt   time.Time // zero: never
	// PolicyIDs are the trust policies that admitted the CI job this
	// token descends from (minted by the job, or by a build it started);
	// removing any of them deletes the token. Empty for everything else.
	PolicyIDs []string
}

// Trust-policy providers: the CI systems whose OIDC tokens kiln accepts.
const (
	ProviderGitHub    = "github"
	ProviderCircleCI  = "circleci"
	ProviderBuildkite = "buildkite"
	ProviderGitLab    = "gitlab"
)

// TrustPolicy lets CI jobs of one repository or pipeline build in one
// project with their provider's OIDC token instead of a stored secret.
// Owner and Repo are the two claims matched, per provider:
//
//	provider   Owner (claim)                       Repo (claim)
//	github     repository_owner                    repository: "repo" or "owner/repo"
//	circleci   oidc.circleci.com/org-id (UUID)     oidc.circleci.com/project-id (UUID)
//	buildkite  organization_slug                   pipeline_slug
//	gitlab     namespace_path ("group/sub")        project_path ("group/sub/project")
//
// Values are kept as the administrator entered them (validated by
// internal/project); matching is case-insensitive (policyMatches).
type TrustPolicy struct {
	ID        string
	ProjectID string
	OrgID     string
	Provider  string
	Owner     string
	Repo      string
	CreatedAt time.Time
	// kiln's extensions (kiln.v1.TrustPolicyService; Depot's wire types
	// carry none of them). Empty fields restrict nothing.
	RepoID, OwnerID string // the provider's immutable ids
	Ref             string // a ref or a glob of refs ("refs/heads/main", "refs/tags/v*")
	RefType         string // "branch" or "tag"
	Event           string // GitHub event_name, GitLab pipeline_source
	Environment     string
	Workflow        string // GitHub job_workflow_ref (a glob)
	Role            string // RoleBuild ("" too) or RoleProject
}

// Trust policy roles: what a job admitted by the policy may do in its
// project. RoleBuild (the default) builds and pushes and pulls images;
// RoleProject has a project token's rights.
const (
	RoleBuild   = "build"
	RoleProject = "project"
)
