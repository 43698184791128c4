package build

import (
	"context"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/steps"
)

// Status is where a build is in its life; transitions.go says which
// status may follow which.
type Status string

// Build statuses. A client build is created running (a client holds it); a
// source build is created queued, runs, pushes. Every build ends in exactly
// one of succeeded, failed or canceled, and terminal statuses never change.
const (
	Queued    Status = "queued"
	Running   Status = "running"
	Pushing   Status = "pushing"
	Succeeded Status = "succeeded"
	Failed    Status = "failed"
	Canceled  Status = "canceled"
)

// Kind says who runs a build.
type Kind string

// Build kinds.
const (
	// KindClient: a client (kiln build, depot build) runs the solve on
	// the project's builder and reports health, status and the result.
	KindClient Kind = "client"
	// KindSource: kiln runs the build itself from an uploaded context.
	KindSource Kind = "source"
)

// Build is one CreateBuild: a client's build on a project's builders, or a
// source build kiln runs itself.
type Build struct {
	ID           string
	ProjectID    string
	OrgID        string
	Status       Status
	Command      int32
	Options      string // the client's build options, JSON, as reported at creation
	Error        string
	Platforms    string // comma-separated platforms the build acquired builders for
	CreatedAt    time.Time
	StartedAt    time.Time
	FinishedAt   time.Time
	LastHealthAt time.Time
	// Kind is KindClient ("" reads as client) or KindSource.
	Kind Kind
	// Spec is a source build's request (the runner's JSON); "" otherwise.
	Spec string
	// Secrets are a source build's secrets, sealed with the server's key;
	// cleared when the build ends.
	Secrets string
	// ImageRefs and ImageDigest are what a source build pushed.
	ImageRefs   []string
	ImageDigest string
	// CreatedBy is the id of the stored token that created a client build;
	// "" for OIDC callers and source builds.
	CreatedBy string
	// PolicyIDs are the trust policies that admitted the CI job that
	// started the build (empty for kiln's own tokens): removing one ends
	// the build (EndAdmittedBy). Until is when that job's token expires:
	// the build's tokens, certificates and builder access end then
	// (auth/life.go).
	PolicyIDs []string
	Until     time.Time
	// GitCommit is the commit a build of a git context built; "" for
	// other builds (and until it is known).
	GitCommit string
	// Replica is the control-plane replica holding the build's builder
	// lease (a client build) or running it (a source build); "" until one
	// does. A replica that dies takes its builds with it (internal/cluster).
	Replica string
}

// Terminal reports whether the build has ended.
func (b Build) Terminal() bool { return b.Status.Terminal() }

// IsSource reports a build kiln runs itself from an uploaded context.
func (b Build) IsSource() bool { return b.Kind == KindSource }

// EffectiveKind is the build's kind, KindClient or KindSource, with ""
// (and anything that is not KindSource) read as KindClient: what the
// metrics label and the ClickHouse export record.
func (b Build) EffectiveKind() Kind {
	if b.IsSource() {
		return KindSource
	}
	return KindClient
}

// Scope places the build for authorization (auth.Principal's checks).
func (b Build) Scope() auth.Scope {
	return auth.Scope{OrgID: b.OrgID, ProjectID: b.ProjectID, BuildID: b.ID}
}

// Step is one step of a build: a BuildKit vertex as the builder or the
// client showed it, or a step of the client's or kiln's own ("[depot] …",
// "[kiln] …"), which CountedSteps never counts.
type Step struct {
	Digest      string
	Name        string
	Cached      bool
	StartedAt   time.Time
	CompletedAt time.Time
	Error       string
}

// MergeStep folds a newer report s of a step into what is stored of it,
// old, by the rules of [steps.Merge]: stores call it so a step the builder
// and the client both report is one step, whatever order they come in.
func MergeStep(old, s Step) Step {
	m := steps.Merge(
		steps.Step{Digest: old.Digest, Name: old.Name, Cached: old.Cached, Started: old.StartedAt, Completed: old.CompletedAt, Error: old.Error},
		steps.Step{Digest: s.Digest, Name: s.Name, Cached: s.Cached, Started: s.StartedAt, Completed: s.CompletedAt, Error: s.Error})
	return Step{Digest: old.Digest, Name: m.Name, Cached: m.Cached, StartedAt: m.Started, CompletedAt: m.Completed, Error: m.Error}
}

// LogLine is one line a step printed.
type LogLine struct {
	Digest  string
	At      time.Time
	Message string
	// Seq numbers a build's lines from 1 in the order they were stored;
	// set by the List methods.
	Seq int
}

// LogLinesOf are the lines a steps.Recorder observed, to store.
func LogLinesOf(lines []steps.LogLine) []LogLine {
	out := make([]LogLine, len(lines))
	for i, l := range lines {
		out[i] = LogLine{Digest: l.Digest, At: l.At, Message: l.Message}
	}
	return out
}

// Share makes one build readable without authentication by whoever
// holds Token (the last segment of its share URL).
type Share struct {
	BuildID   string
	Token     string
	CreatedBy string // the sharing token's id
	CreatedAt time.Time
}

// Query selects a project's builds, newest first (by CreatedAt, then ID).
type Query struct {
	ProjectID string
	// From and To bound CreatedAt to [From, To); zero values are unbounded.
	From, To time.Time
	// BeforeCreated and BeforeID continue a listing after the last build of
	// the previous page: only builds ordered strictly after it are returned.
	// A zero BeforeCreated starts at the newest.
	BeforeCreated time.Time
	BeforeID      string
	Limit         int
}

// ProjectUsage is what one project's builds used in a period.
type ProjectUsage struct {
	ProjectID string
	Builds    int // builds created in the period, in any status
	// BuildTime sums FinishedAt - StartedAt over the period's builds that
	// have finished; running builds add nothing until they end.
	BuildTime time.Duration
}

// Store is what the build service needs of kiln's store
// (internal/store implements it).
type Store interface {
	GetProject(ctx context.Context, id string) (project.Project, error)
	CreateToken(ctx context.Context, t auth.Token) error
	GetToken(ctx context.Context, id string) (auth.Token, error)
	// ListTrustPolicies lists one project's policies, oldest first.
	ListTrustPolicies(ctx context.Context, projectID string) ([]auth.TrustPolicy, error)
	// TrustPoliciesExist reports whether every policy of ids still exists.
	TrustPoliciesExist(ctx context.Context, ids []string) (bool, error)

	CreateBuild(ctx context.Context, b Build) error
	GetBuild(ctx context.Context, id string) (Build, error)
	// ListBuilds lists a project's builds newest first, created before
	// `before` (zero: now), at most limit.
	ListBuilds(ctx context.Context, projectID string, before time.Time, limit int) ([]Build, error)
	// ListBuildsByStatus lists builds in one status, oldest first.
	ListBuildsByStatus(ctx context.Context, status Status) ([]Build, error)
	// UpdateBuild reads the build, applies fn and writes it back in one
	// transaction. If fn returns an error nothing is written.
	UpdateBuild(ctx context.Context, id string, fn func(*Build) error) (Build, error)
	QueryBuilds(ctx context.Context, q Query) ([]Build, error)
	// BuildUsage sums the builds of an organization created in [from, to),
	// per project; projects without builds in the period are left out.
	BuildUsage(ctx context.Context, orgID string, from, to time.Time) ([]ProjectUsage, error)

	// PutSteps inserts steps of a build, or merges them by digest into
	// those stored (MergeStep), keeping the order in which digests were
	// first seen.
	PutSteps(ctx context.Context, buildID string, steps []Step) error
	ListSteps(ctx context.Context, buildID string) ([]Step, error)
	// LastUncachedStepDurations returns, for each name, how long the most
	// recent uncached, successful, completed step of that name took in one
	// of the project's builds created before `before`. Names never run
	// uncached are absent.
	LastUncachedStepDurations(ctx context.Context, projectID string, names []string, before time.Time) (map[string]time.Duration, error)
	AppendLogs(ctx context.Context, buildID string, lines []LogLine) error
	ListLogs(ctx context.Context, buildID, digest string, after int, limit int) ([]LogLine, int, error)

	// CreateBuildShare fails with ErrAlreadyExists when the build is
	// already shared (or, astronomically unlikely, the token is taken).
	CreateBuildShare(ctx context.Context, sh Share) error
	GetBuildShare(ctx context.Context, buildID string) (Share, error)
	GetBuildShareByToken(ctx context.Context, token string) (Share, error)
	// DeleteBuildShare fails with ErrNotFound when the build is not shared.
	DeleteBuildShare(ctx context.Context, buildID string) error

	ResourceStore
}
