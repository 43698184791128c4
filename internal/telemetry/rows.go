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

// exportRows makes the records of one finished build: its steps', its
// log lines' (a page at a time) and, last, its own. lastUncached is what
// ComputeStats takes (the time each cached step's name took when it last
// ran uncached); version orders exports of the same build (the newest
// wins).
type exportRows struct {
	b            build.Build
	steps        []build.Step
	lastUncached map[string]time.Duration
	version      int64
	created      int64 // b.CreatedAt, Unix seconds
}

func newExportRows(b build.Build, steps []build.Step, lastUncached map[string]time.Duration, version int64) exportRows {
	return exportRows{b: b, steps: steps, lastUncached: lastUncached, version: version, created: unix(b.CreatedAt)}
}

func record(table string, v any) Record {
	row, _ := json.Marshal(v) // plain structs of strings and numbers: never fails
	return Record{Table: table, Row: row}
}

// stepRecords are the build's steps' rows.
func (x exportRows) stepRecords() []Record {
	counted := map[string]bool{}
	for _, s := range build.CountedSteps(x.steps) {
		counted[s.Digest] = true
	}
	out := make([]Record, 0, len(x.steps))
	for i, s := range x.steps {
		r := stepRow{BuildID: x.b.ID, ProjectID: x.b.ProjectID, BuildCreatedAt: x.created, Digest: s.Digest, Position: i + 1,
			Name: s.Name, Cached: flag(s.Cached), Counted: flag(counted[s.Digest]), StartedAt: unix(s.StartedAt), CompletedAt: unix(s.CompletedAt),
			DurationMs: millis(s.StartedAt, s.CompletedAt), Error: s.Error, Version: x.version}
		if s.Cached && counted[s.Digest] {
			r.SavedMs = x.lastUncached[s.Name].Milliseconds()
		}
		out = append(out, record(TableSteps, r))
	}
	return out
}

// logRecords are the rows of a page of the build's log lines.
func (x exportRows) logRecords(logs []build.LogLine) []Record {
	out := make([]Record, 0, len(logs))
	for _, l := range logs {
		out = append(out, record(TableStepLogs, logRow{BuildID: x.b.ID, ProjectID: x.b.ProjectID, BuildCreatedAt: x.created, Seq: l.Seq,
			Digest: l.Digest, At: unix(l.At), Message: l.Message, Version: x.version}))
	}
	return out
}

// buildRecord is the build's own row: spooled last, so a query that sees
// the build sees its steps.
func (x exportRows) buildRecord() Record {
	b := x.b
	st := build.ComputeStats(b, x.steps, x.lastUncached)
	return record(TableBuilds, buildRow{BuildID: b.ID, ProjectID: b.ProjectID, OrgID: b.OrgID, Kind: string(b.EffectiveKind()), Status: string(b.Status),
		Error: b.Error, Command: b.Command, Platforms: b.Platforms, ImageDigest: b.ImageDigest, CreatedAt: x.created,
		StartedAt: unix(b.StartedAt), FinishedAt: unix(b.FinishedAt), DurationMs: st.Duration.Milliseconds(),
		TotalSteps: st.TotalSteps, CachedSteps: st.CachedSteps, SavedMs: st.Saved.Milliseconds(), Version: x.version})
}

func flag(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
