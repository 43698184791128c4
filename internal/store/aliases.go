package store

import (
	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
)

// TEMPORARY (issue 15). The domain records and their typed statuses moved
// to the domain packages that own them; these aliases keep callers that
// still say store.Build, store.BuildRunning, … compiling while other work
// on those callers lands. They go away once callers move: replace
// store.X by the name on the right. Nothing in package store uses them.

// Build records: internal/build.
type (
	Build             = build.Build
	Step              = build.Step
	LogLine           = build.LogLine
	BuildShare        = build.Share
	BuildQuery        = build.Query
	ProjectBuildUsage = build.ProjectUsage
	BuildStatus       = build.Status
	BuildKind         = build.Kind
)

// Build statuses and kinds: internal/build.
const (
	BuildQueued     = build.Queued
	BuildRunning    = build.Running
	BuildPushing    = build.Pushing
	BuildSucceeded  = build.Succeeded
	BuildFailed     = build.Failed
	BuildCanceled   = build.Canceled
	BuildKindClient = build.KindClient
	BuildKindSource = build.KindSource
)

// Project records: internal/project.
type (
	Project      = project.Project
	Organization = project.Organization
)

// Tokens and trust policies: internal/auth.
type (
	Token       = auth.Token
	TrustPolicy = auth.TrustPolicy
)

// Token kinds and trust-policy providers: internal/auth.
const (
	TokenOrg          = auth.TokenOrg
	TokenProject      = auth.TokenProject
	TokenBuild        = auth.TokenBuild
	TokenOIDC         = auth.TokenOIDC
	TokenPull         = auth.TokenPull
	ProviderGitHub    = auth.ProviderGitHub
	ProviderCircleCI  = auth.ProviderCircleCI
	ProviderBuildkite = auth.ProviderBuildkite
	ProviderGitLab    = auth.ProviderGitLab
)

// Audit log entries: internal/audit.
type (
	AuditEvent = audit.Entry
	AuditQuery = audit.EntryQuery
)

// Device logins and their statuses: internal/login.
type (
	Login       = login.Login
	LoginStatus = login.Status
)

const (
	LoginPending  = login.StatusPending
	LoginApproved = login.StatusApproved
	LoginDenied   = login.StatusDenied
	LoginFinished = login.StatusFinished
)
