package auth

import (
	"strings"
	"time"
)

// Provider names a CI system whose OIDC tokens kiln accepts; its values
// are the Provider* names trust policies use.
type Provider string

// Identity is what a CI job's verified OIDC token says about the job
// (internal/auth/oidc verifies tokens and produces it). Owner and Repo are
// the claims trust policies match (see TrustPolicy).
type Identity struct {
	Provider  Provider
	Issuer    string
	Subject   string
	Owner     string
	Repo      string
	ExpiresAt time.Time
	// The provider's immutable ids and the job's context, which a policy
	// may pin or restrict (empty when the provider has no such claim):
	// GitHub repository_id, repository_owner_id, ref, ref_type,
	// event_name, environment, job_workflow_ref; GitLab project_id,
	// namespace_id, ref, ref_type, pipeline_source, environment.
	RepoID, OwnerID string
	Ref, RefType    string
	Event           string
	Environment     string
	Workflow        string
}

// String names the job's source for messages and logs, e.g.
// "GitHub repository acme/app".
func (id Identity) String() string {
	switch id.Provider {
	case ProviderGitHub:
		return "GitHub repository " + id.Repo
	case ProviderGitLab:
		return "GitLab project " + id.Repo
	case ProviderBuildkite:
		return "Buildkite pipeline " + id.Owner + "/" + id.Repo
	case ProviderCircleCI:
		return "CircleCI project " + id.Repo + " of organization " + id.Owner
	}
	return string(id.Provider) + " " + id.Owner + "/" + id.Repo
}

// LooksLikeJWT reports whether a bearer has the shape of a compact JWS:
// three non-empty base64url parts separated by dots. kiln's own tokens
// never contain dots.
func LooksLikeJWT(s string) bool {
	if strings.Count(s, ".") != 2 {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if part == "" {
			return false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
