package web

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// A share link (ShareBuild) shows the build page read-only to anyone who
// holds it, with no session: status, timings, the step waterfall and the
// resource peaks. Never the log, the project, the trigger, the build's
// options or image names, never a form; the share token in the path is
// the only capability, and a malformed, unknown or revoked one is a 404.
// The script polls /shared/{token}/live, which answers the same subset.

// sharedData is a shared build's page: buildData with nothing but what a
// share shows.
func (d *Dashboard) sharedData(sb build.SharedBuild, token string) buildData {
	b := sb.Build
	row := d.rowOf(b, sb.Stats, d.cfg.Now())
	row.Trigger = "" // may name a rebuilt build or a CI job
	return buildData{Build: build.Build{ID: b.ID, Status: b.Status, Kind: b.Kind, CreatedAt: b.CreatedAt,
		StartedAt: b.StartedAt, FinishedAt: b.FinishedAt, Error: clip(b.Error)},
		Row: row, Steps: liveSteps(sb.Steps, b.Terminal()), Shared: true,
		Live: "/shared/" + url.PathEscape(token) + "/live"}
}

func (d *Dashboard) sharedPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	token := r.PathValue("token")
	sb, err := d.cfg.Builds.Shared(ctx, token)
	if err != nil {
		d.sharedFail(w, r, err)
		return
	}
	d.renderView(w, r, http.StatusOK, "build", view{Title: "Shared build " + sb.Build.ID, Home: "/", Shared: true,
		Data: d.sharedData(sb, token)})
}

func (d *Dashboard) sharedFail(w http.ResponseWriter, r *http.Request, err error) {
	if errdefs.IsNotFound(err) {
		d.renderView(w, r, http.StatusNotFound, "error", view{Title: http.StatusText(http.StatusNotFound), Home: "/", Shared: true,
			Data: errorData{Message: "No such shared build: the link is wrong, or its build is no longer shared."}})
		return
	}
	d.cfg.Logger.ErrorContext(r.Context(), "dashboard: shared build", "err", err)
	d.renderView(w, r, http.StatusInternalServerError, "error", view{Title: http.StatusText(http.StatusInternalServerError), Home: "/",
		Shared: true, Data: errorData{Message: "Internal error; see the server log."}})
}

// sharedLive answers a shared page's poll: the build, its steps and its
// resource peaks; no log lines and no earlier builds.
func (d *Dashboard) sharedLive(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	d.secure(w)
	w.Header().Set("Referrer-Policy", "no-referrer")
	sb, err := d.cfg.Builds.Shared(ctx, r.PathValue("token"))
	if errdefs.IsNotFound(err) {
		http.Error(w, "no such shared build", http.StatusNotFound)
		return
	}
	var res build.Resources
	if err == nil && d.cfg.Samples != nil {
		if res.Samples, err = d.cfg.Samples.ListResourceSamples(ctx, sb.Build.ID); err == nil {
			res.Events, err = d.cfg.Samples.ListResourceEvents(ctx, sb.Build.ID)
		}
	}
	if err != nil {
		d.cfg.Logger.ErrorContext(ctx, "dashboard: shared build live", "err", err)
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	b := sb.Build
	row := d.rowOf(b, sb.Stats, d.cfg.Now())
	v := liveView{Build: liveBuild{ID: b.ID, Status: string(b.Status), Terminal: b.Terminal(),
		CreatedAt: b.CreatedAt, StartedAt: timePtr(b.StartedAt), FinishedAt: timePtr(b.FinishedAt),
		DurationMs: row.Duration.Milliseconds(), Error: clip(b.Error), Cached: sb.Stats.CachedSteps, Total: sb.Stats.TotalSteps,
		SavedMs: sb.Stats.Saved.Milliseconds(), Ahead: row.Ahead}, Steps: liveSteps(sb.Steps, b.Terminal()), Logs: []liveLine{},
		Resources: resourcesOf(res)}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		d.cfg.Logger.DebugContext(ctx, "dashboard: shared build live: write", "err", err)
	}
}
