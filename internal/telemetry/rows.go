package telemetry

import (
	"encoding/json"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// The rows of the three tables, as JSONEachRow objects. Times are Unix
// seconds (ClickHouse parses a number into DateTime whatever the server's
// time zone); zero times are 0.
type buildRow struct {
	BuildID     string `json:"build_id"`
	ProjectID   string `json:"project_id"`
	OrgID       string `json:"org_id"`
	Kind        string `json:"kind"`
	Status      string `json:"status"`
	Error       string `json:"error"`
	Command     int32  `json:"command"`
	Platforms   string `json:"platforms"`
	ImageDigest string `json:"image_digest"`
	CreatedAt   int64  `json:"created_at"`
	StartedAt   int64  `json:"started_at"`
	FinishedAt  int64  `json:"finished_at"`
	DurationMs  int64  `json:"duration_ms"`
	TotalSteps  int    `json:"total_steps"`
	CachedSteps int    `json:"cached_steps"`
	SavedMs     int64  `json:"saved_ms"`
	Version     int64  `json:"version"`
}

type stepRow struct {
	BuildID        string `json:"build_id"`
	ProjectID      string `json:"project_id"`
	BuildCreatedAt int64  `json:"build_created_at"`
	Digest         string `json:"digest"`
	Position       int    `json:"position"`
	Name           string `json:"name"`
	Cached         uint8  `json:"cached"` // 0 or 1: UInt8 on every release
	Counted        uint8  `json:"counted"`
	StartedAt      int64  `json:"started_at"`
	CompletedAt    int64  `json:"completed_at"`
	DurationMs     int64  `json:"duration_ms"`
	Error          string `json:"error"`
	SavedMs        int64  `json:"saved_ms"`
	Version        int64  `json:"version"`
}

type logRow struct {
	BuildID        string `json:"build_id"`
	ProjectID      string `json:"project_id"`
	BuildCreatedAt int64  `json:"build_created_at"`
	Seq            int    `json:"seq"`
	Digest         string `json:"digest"`
	At             int64  `json:"at"`
	Message        string `json:"message"`
	Version        int64  `json:"version"`
}

func unix(t time.Time) int64 {
	if t.IsZero() || t.Unix() < 0 {
		return 0
	}
	return t.Unix()
}

func millis(from, to time.Time) int64 {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return 0
	}
	return to.Sub(from).Milliseconds()
}

// rows are the records of one finished build: its row, its steps', and
// its log lines'. lastUncached is what ComputeStats takes (the time each
// cached step's name took when it last ran uncached); version orders
// exports of the same build (the newest wins).
func rows(b build.Build, steps []build.Step, logs []build.LogLine, lastUncached map[string]time.Duration, version int64) []Record {
	st := build.ComputeStats(b, steps, lastUncached)
	counted := map[string]bool{}
	for _, s := range build.CountedSteps(steps) {
		counted[s.Digest] = true
	}
	out := make([]Record, 0, 1+len(steps)+len(logs))
	add := func(table string, v any) {
		row, _ := json.Marshal(v) // plain structs of strings and numbers: never fails
		out = append(out, Record{Table: table, Row: row})
	}
	created := unix(b.CreatedAt)
	for i, s := range steps {
		r := stepRow{BuildID: b.ID, ProjectID: b.ProjectID, BuildCreatedAt: created, Digest: s.Digest, Position: i + 1,
			Name: s.Name, Cached: flag(s.Cached), Counted: flag(counted[s.Digest]), StartedAt: unix(s.StartedAt), CompletedAt: unix(s.CompletedAt),
			DurationMs: millis(s.StartedAt, s.CompletedAt), Error: s.Error, Version: version}
		if s.Cached && counted[s.Digest] {
			r.SavedMs = lastUncached[s.Name].Milliseconds()
		}
		add(TableSteps, r)
	}
	for _, l := range logs {
		add(TableStepLogs, logRow{BuildID: b.ID, ProjectID: b.ProjectID, BuildCreatedAt: created, Seq: l.Seq, Digest: l.Digest,
			At: unix(l.At), Message: l.Message, Version: version})
	}
	// The build's row last: a query that sees the build sees its steps.
	add(TableBuilds, buildRow{BuildID: b.ID, ProjectID: b.ProjectID, OrgID: b.OrgID, Kind: string(kindOf(b)), Status: string(b.Status),
		Error: b.Error, Command: b.Command, Platforms: b.Platforms, ImageDigest: b.ImageDigest, CreatedAt: created,
		StartedAt: unix(b.StartedAt), FinishedAt: unix(b.FinishedAt), DurationMs: st.Duration.Milliseconds(),
		TotalSteps: st.TotalSteps, CachedSteps: st.CachedSteps, SavedMs: st.Saved.Milliseconds(), Version: version})
	return out
}

func kindOf(b build.Build) build.Kind {
	if b.Kind == "" {
		return build.KindClient
	}
	return b.Kind
}

func flag(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
