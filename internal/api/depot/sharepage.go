package depot

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// SharePage serves GET /shared/{token}, the URL ShareBuild hands out: a
// read-only summary of one build (status, times, step counts, its steps;
// never logs, project or organization names). It takes no token: the
// share token in the path is the capability, and a revoked, unknown or
// malformed one is a plain 404. JSON for `Accept: application/json` or
// `?format=json`; anything else (a browser) is Page's, the dashboard's
// read-only build page (web.Dashboard.SharedPage), or the JSON when Page
// is nil.
type SharePage struct {
	Builds *build.Service
	Page   http.Handler
	Logger *slog.Logger
}

// maxSharedSteps bounds the page for builds with very many vertices.
const maxSharedSteps = 1000

type sharedStep struct {
	Name        string     `json:"name"`
	Cached      bool       `json:"cached"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
	DurationMs  int64      `json:"duration_ms"`
	Error       string     `json:"error,omitempty"`
}

// buildSummary is what the share page and the build page (buildpage.go)
// both show of a build.
type buildSummary struct {
	BuildID              string     `json:"build_id"`
	Status               string     `json:"status"`
	CreatedAt            time.Time  `json:"created_at"`
	StartedAt            *time.Time `json:"started_at,omitempty"`
	FinishedAt           *time.Time `json:"finished_at,omitempty"`
	BuildDurationSeconds int32      `json:"build_duration_seconds"`
	SavedDurationSeconds int32      `json:"saved_duration_seconds"`
	CachedSteps          int        `json:"cached_steps"`
	TotalSteps           int        `json:"total_steps"`
	Error                string     `json:"error,omitempty"`
}

func summaryOf(b build.Build, st build.Stats) buildSummary {
	return buildSummary{
		BuildID:              b.ID,
		Status:               strings.ToLower(strings.TrimPrefix(coreStatus[b.Status].String(), "STATUS_")),
		CreatedAt:            b.CreatedAt,
		StartedAt:            timePtr(b.StartedAt),
		FinishedAt:           timePtr(b.FinishedAt),
		BuildDurationSeconds: build.Seconds(st.Duration),
		SavedDurationSeconds: build.Seconds(st.Saved),
		CachedSteps:          st.CachedSteps,
		TotalSteps:           st.TotalSteps,
		Error:                b.Error,
	}
}

type sharedView struct {
	buildSummary
	Steps          []sharedStep `json:"steps"`
	StepsTruncated bool         `json:"steps_truncated,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func shareView(sb build.SharedBuild) sharedView {
	v := sharedView{buildSummary: summaryOf(sb.Build, sb.Stats), Steps: []sharedStep{}}
	for _, st := range build.CountedSteps(sb.Steps) {
		if len(v.Steps) == maxSharedSteps {
			v.StepsTruncated = true
			break
		}
		s := sharedStep{Name: st.Name, Cached: st.Cached, StartedAt: timePtr(st.StartedAt), CompletedAt: timePtr(st.CompletedAt), Error: st.Error}
		if !st.StartedAt.IsZero() && st.CompletedAt.After(st.StartedAt) {
			s.DurationMs = st.CompletedAt.Sub(st.StartedAt).Milliseconds()
		}
		v.Steps = append(v.Steps, s)
	}
	return v
}

func (h *SharePage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.Page != nil && r.URL.Query().Get("format") != "json" && !strings.Contains(r.Header.Get("Accept"), "application/json") {
		h.Page.ServeHTTP(w, r)
		return
	}
	hdr := w.Header()
	// The URL is the secret: keep it out of Referer headers and caches,
	// and let nothing on the page run or load.
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	sb, err := h.Builds.Shared(ctx, r.PathValue("token"))
	if errdefs.IsNotFound(err) {
		http.Error(w, "404 not found", http.StatusNotFound)
		return
	}
	if err != nil {
		h.Logger.ErrorContext(ctx, "shared build page", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	hdr.Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(shareView(sb))
}
