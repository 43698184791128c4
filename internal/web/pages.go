package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/retention"
)

// pageTimeout bounds the work of one page.
const pageTimeout = 30 * time.Second

// maxFormBytes bounds a form's body: a token and an anti-forgery field.
const maxFormBytes = 8 << 10

// homeOf is where a principal starts: an organization's projects, or a
// project token's own project.
func homeOf(p auth.Principal) string {
	if p.IsOrg() {
		return "/projects"
	}
	return "/projects/" + p.ProjectID
}

func (d *Dashboard) home(w http.ResponseWriter, r *http.Request) {
	s, ok, err := d.sessions.get(r.Context(), d.cookieID(r))
	if err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: authenticate session", "err", err)
		d.fail(w, r, nil, http.StatusInternalServerError, "Internal error; see the server log.")
		return
	}
	if !ok {
		d.signInPage(w, r)
		return
	}
	d.secure(w)
	http.Redirect(w, r, homeOf(s.principal), http.StatusSeeOther)
}

type signInData struct {
	Message string
	Error   bool
	Next    string
	Device  bool // offer signing in with an administrator's approval
}

// localPath keeps a next= target on this server: a path of one of the
// dashboard's pages, nothing else.
func localPath(next string) string {
	if (strings.HasPrefix(next, "/projects") || strings.HasPrefix(next, "/builds/")) &&
		!strings.HasPrefix(next, "//") && !strings.ContainsAny(next, "\\?#\r\n") {
		return next
	}
	return ""
}

func (d *Dashboard) signInPage(w http.ResponseWriter, r *http.Request) {
	data := signInData{Next: localPath(r.URL.Query().Get("next")), Device: d.cfg.Logins != nil}
	if r.URL.Query().Get("ended") != "" {
		data.Message = "Your session ended (signed out, expired, or its token was revoked). Sign in again."
	}
	d.render(w, r, http.StatusOK, "signin", nil, "Sign in", data)
}

// signIn takes a pasted token (POST, never a URL) and starts a session
// scoped exactly as that token: organization and project tokens may sign
// in; build, pull and CI tokens may not.
func (d *Dashboard) signIn(w http.ResponseWriter, r *http.Request) {
	if err := d.checkOrigin(r); err != nil {
		d.fail(w, r, nil, http.StatusForbidden, "Cross-origin sign-in refused: open the sign-in page of this server directly.")
		return
	}
	if ok, wait := d.signIns.allow(peerOf(r)); !ok {
		d.cfg.Logger.DebugContext(r.Context(), "dashboard: sign-in refused: too many from this address", "peer", r.RemoteAddr)
		retryAfter(w, wait)
		d.render(w, r, http.StatusTooManyRequests, "signin", nil, "Sign in", signInData{Error: true, Device: d.cfg.Logins != nil,
			Message: "Too many sign-ins from this address; wait a minute and try again."})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	secret := strings.TrimSpace(r.PostFormValue("token"))
	next := localPath(r.PostFormValue("next"))
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	p, err := d.cfg.Authn.Authenticate(ctx, secret)
	if err == nil && p.Kind != auth.TokenOrg && p.Kind != auth.TokenProject {
		err = errdefs.ErrUnauthenticated
	}
	if err != nil {
		if !errors.Is(err, errdefs.ErrUnauthenticated) && !errors.Is(err, errdefs.ErrPermission) {
			d.cfg.Logger.ErrorContext(ctx, "dashboard: sign in", "err", err)
		} else {
			d.denied(ctx, r, "refused a token that is not a valid organization or project token")
		}
		d.render(w, r, http.StatusUnauthorized, "signin", nil, "Sign in", signInData{Error: true, Next: next, Device: d.cfg.Logins != nil,
			Message: "That is not a valid organization or project token of this server."})
		return
	}
	if old := d.cookieID(r); old != "" {
		// A new sign-in replaces the browser's session.
		if err := d.sessions.end(ctx, old); err != nil {
			d.cfg.Logger.WarnContext(ctx, "dashboard: end the replaced session", "err", err)
		}
	}
	id, _, err := d.sessions.create(ctx, p, false)
	if err != nil {
		d.cfg.Logger.ErrorContext(ctx, "dashboard: sign in", "err", err)
		d.fail(w, r, nil, http.StatusInternalServerError, "Internal error; see the server log.")
		return
	}
	d.setCookie(w, r, id, int(sessionLife/time.Second))
	d.cfg.Logger.InfoContext(ctx, "dashboard: signed in", "token_id", p.TokenID, "token_kind", p.Kind)
	if next == "" {
		next = homeOf(p)
	}
	d.secure(w)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (d *Dashboard) signOut(w http.ResponseWriter, r *http.Request) {
	s, ok, err := d.sessions.get(r.Context(), d.cookieID(r))
	if err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: sign out", "err", err)
		d.fail(w, r, nil, http.StatusInternalServerError, "Internal error; see the server log.")
		return
	}
	if !ok {
		d.secure(w)
		http.Redirect(w, r, "/sign-in", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := d.checkCSRF(r, s); err != nil {
		d.fail(w, r, s, http.StatusForbidden, err.Error())
		return
	}
	if err := d.sessions.take(r.Context(), d.cookieID(r)); err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: sign out", "err", err)
		d.fail(w, r, s, http.StatusInternalServerError, "Internal error; see the server log.")
		return
	}
	d.setCookie(w, r, "", -1)
	if s.minted && d.cfg.Tokens != nil {
		// Nobody else holds the token a device login made for this session.
		if err := d.cfg.Tokens.DeleteToken(r.Context(), s.principal, s.principal.TokenID); err != nil && !errdefs.IsNotFound(err) {
			d.cfg.Logger.WarnContext(r.Context(), "dashboard: delete a signed-out device login's token", "token_id", s.principal.TokenID, "err", err)
		}
	}
	d.secure(w)
	http.Redirect(w, r, "/sign-in", http.StatusSeeOther)
}

type projectRow struct {
	Project    project.Project
	Builders   []string // "<platform> <state>"
	Builds     int
	BuildTime  string
	Saved      string
	CacheBytes string
}

func (d *Dashboard) projectsPage(w http.ResponseWriter, r *http.Request) {
	s, p, ok := d.session(w, r, true)
	if !ok {
		return
	}
	if !p.IsOrg() {
		d.secure(w)
		http.Redirect(w, r, homeOf(p), http.StatusSeeOther)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	projects, err := d.cfg.Projects.List(ctx, p)
	if err != nil {
		d.failErr(w, r, s, "organization", err)
		return
	}
	usage, err := d.usage.get(ctx, p, projects, d.cfg.Now, func(ctx context.Context) ([]build.Usage, error) {
		now := d.cfg.Now()
		return d.cfg.Builds.Usage(ctx, p, projects, build.Period{Start: now.Add(-7 * 24 * time.Hour), End: now}, true)
	})
	if err != nil {
		d.failErr(w, r, s, "organization", err)
		return
	}
	var builders map[string][]string
	if d.cfg.Builders != nil {
		builders = d.cfg.Builders()
	}
	fresh := map[string]project.Project{}
	for _, pr := range projects {
		fresh[pr.ID] = pr
	}
	rows := make([]projectRow, 0, len(usage))
	for _, u := range usage {
		if pr, ok := fresh[u.Project.ID]; ok {
			u.Project = pr // the usage may be a minute old; the project is not
		}
		rows = append(rows, projectRow{Project: u.Project, Builds: u.Builds, BuildTime: human(u.BuildTime),
			Saved: human(u.SavedTime), CacheBytes: bytesHuman(u.CacheBytes), Builders: builders[u.Project.ID]})
	}
	d.render(w, r, http.StatusOK, "projects", s, "Projects", rows)
}

// buildRow is one build in a project's list and charts.
type buildRow struct {
	ID         string
	Status     string
	Kind       string
	Created    time.Time
	Duration   time.Duration
	Cached     int
	Total      int
	Saved      time.Duration
	HitPercent int // cached of total steps, in percent; -1 without steps
	// Ahead is how many builds wait ahead of a queued build; -1 when it
	// is not queued or not known.
	Ahead   int
	Trigger string // what started it; "" when not known
}

func (d *Dashboard) rowOf(b build.Build, st build.Stats, now time.Time) buildRow {
	row := buildRow{ID: b.ID, Status: string(b.Status), Kind: string(b.Kind), Created: b.CreatedAt,
		Duration: st.Duration, Cached: st.CachedSteps, Total: st.TotalSteps, Saved: st.Saved, HitPercent: -1, Ahead: -1}
	if row.Kind == "" {
		row.Kind = string(build.KindClient)
	}
	if !b.Terminal() && !b.StartedAt.IsZero() {
		row.Duration = now.Sub(b.StartedAt)
	}
	if st.TotalSteps > 0 {
		row.HitPercent = st.CachedSteps * 100 / st.TotalSteps
	}
	if b.Status == build.Queued && d.cfg.QueuePosition != nil {
		row.Ahead = d.cfg.QueuePosition(b)
	}
	if d.cfg.Trigger != nil {
		row.Trigger = d.cfg.Trigger(b)
	}
	return row
}

type projectData struct {
	Triggers bool // the list has a trigger column
	Project  project.Project
	// Admin: the session may administer the project (an organization
	// token), and Tokens and Policies are its tokens (build tokens left
	// out: one per build, each living as long as its build) and trust
	// policies, read-only.
	Admin     bool
	Images    []imageRow
	MoreImgs  bool
	Retention string // how long images are kept after their push, "" when not known
	// HasQueue: the server runs source builds, and Queue is the project's
	// queued ones in the order they start (at most maxQueue).
	HasQueue  bool
	Queue     []queuedRow
	MoreQueue bool
	Tokens    []auth.Token
	Policies  []auth.TrustPolicy
	Status    string   // the list's filter: a build status, "" for all
	Statuses  []string // the filter's choices
	Builds    []buildRow
	Next      string // the next page's token
	First     bool   // this is the first page
	Charts    charts
	Saved     string // time the cache saved over the charted builds
	ChartSize int
}

// chartBuilds is how many of the newest builds the charts show.
const chartBuilds = 30

// listPage is how many builds one page of the list shows.
const listPage = 20

func (d *Dashboard) projectPage(w http.ResponseWriter, r *http.Request) {
	s, p, ok := d.session(w, r, true)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	proj, err := d.cfg.Projects.Get(ctx, p, r.PathValue("id"))
	if err != nil {
		d.failErr(w, r, s, "project", err)
		return
	}
	now := d.cfg.Now()
	data := projectData{Project: proj, ChartSize: chartBuilds, Statuses: statuses, Triggers: d.cfg.Trigger != nil}
	token := r.URL.Query().Get("page")
	data.First = token == ""
	data.Status = r.URL.Query().Get("status")
	if !slices.Contains(statuses, data.Status) {
		data.Status = ""
	}
	page, next, err := d.listBuilds(ctx, p, proj.ID, token, build.Status(data.Status))
	if err != nil {
		d.failErr(w, r, s, "project", err)
		return
	}
	data.Next = next
	// Each build's statistics once, though it is in the list and the
	// charts; a build gone meanwhile (its project's history was cut) is
	// left out.
	stats := map[string]buildRow{}
	rowsOf := func(bs []build.Build) ([]buildRow, error) {
		var rows []buildRow
		for _, b := range bs {
			row, ok := stats[b.ID]
			if !ok {
				b, st, err := d.cfg.Builds.Stats(ctx, p, b.ID)
				if errdefs.IsNotFound(err) {
					continue
				}
				if err != nil {
					return nil, err
				}
				row = d.rowOf(b, st, now)
				stats[b.ID] = row
			}
			rows = append(rows, row)
		}
		return rows, nil
	}
	if data.Builds, err = rowsOf(page); err != nil {
		d.failErr(w, r, s, "build", err)
		return
	}
	recent, _, err := d.cfg.Builds.Page(ctx, p, proj.ID, chartBuilds, "")
	if err != nil {
		d.failErr(w, r, s, "project", err)
		return
	}
	slices.Reverse(recent) // oldest first, left to right
	charted, err := rowsOf(recent)
	if err != nil {
		d.failErr(w, r, s, "build", err)
		return
	}
	var saved time.Duration
	for _, row := range charted {
		saved += row.Saved
	}
	data.Charts = chartsOf(charted)
	data.Saved = human(saved)
	if d.cfg.Queue != nil && data.First && data.Status == "" {
		if data.Queue, data.MoreQueue, err = d.queue(ctx, p, proj.ID, now); err != nil {
			d.failErr(w, r, s, "project", err)
			return
		}
		data.HasQueue = true
	}
	if d.cfg.Images != nil && data.First && data.Status == "" {
		images, more, err := d.cfg.Images(ctx, p, proj.ID, maxImages)
		if err != nil {
			d.failErr(w, r, s, "project", err)
			return
		}
		data.Images, data.MoreImgs = imageRows(images, now), more
		if len(images) > 0 && !images[0].Expires.IsZero() {
			data.Retention = retention.Format(images[0].Expires.Sub(images[0].PushedAt))
		}
	}
	if data.Admin = p.CanAdminProject(proj); data.Admin && data.First && data.Status == "" {
		tokens, err := d.cfg.Projects.ListTokens(ctx, p, proj.ID)
		if err != nil {
			d.failErr(w, r, s, "project", err)
			return
		}
		for _, t := range tokens {
			if t.Kind != auth.TokenBuild {
				data.Tokens = append(data.Tokens, t)
			}
		}
		if data.Policies, err = d.cfg.Projects.ListTrustPolicies(ctx, p, proj.ID); err != nil {
			d.failErr(w, r, s, "project", err)
			return
		}
	}
	d.render(w, r, http.StatusOK, "project", s, proj.Name, data)
}

// maxQueue is how many queued builds a project page lists.
const maxQueue = 50

// queuedRow is a queued source build as the project's queue lists it.
type queuedRow struct {
	buildRow
	Position int           // 1 starts next among the project's builds
	Age      time.Duration // since it was queued
}

// queue is the project's queued source builds in the order they start:
// each read (and authorized) through Builds, one that started or went
// meanwhile left out.
func (d *Dashboard) queue(ctx context.Context, p auth.Principal, projectID string, now time.Time) ([]queuedRow, bool, error) {
	ids := d.cfg.Queue(projectID)
	more := len(ids) > maxQueue
	if more {
		ids = ids[:maxQueue]
	}
	rows := []queuedRow{}
	for _, id := range ids {
		b, st, err := d.cfg.Builds.Stats(ctx, p, id)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if b.Status != build.Queued || b.ProjectID != projectID {
			continue
		}
		rows = append(rows, queuedRow{buildRow: d.rowOf(b, st, now), Position: len(rows) + 1, Age: max(now.Sub(b.CreatedAt), 0)})
	}
	return rows, more, nil
}

// imageRow is an image as the project page lists it.
type imageRow struct {
	Image
	// Left is the time until it expires ("" not known); Due: expired,
	// waiting for the next garbage collection.
	Left string
	Due  bool
}

func imageRows(images []Image, now time.Time) []imageRow {
	rows := make([]imageRow, 0, len(images))
	for _, im := range images {
		row := imageRow{Image: im}
		if !im.Expires.IsZero() {
			left := im.Expires.Sub(now)
			row.Due = left <= 0
			row.Left = span(left)
		}
		rows = append(rows, row)
	}
	return rows
}

// span is a duration to read at a glance: days and hours from two days
// on, like human below that.
func span(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%dd %dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
	return human(d)
}

// maxImages is how many registry images a project page lists.
const maxImages = 50

// statuses are what the builds list can be filtered by.
var statuses = []string{string(build.Queued), string(build.Running), string(build.Pushing),
	string(build.Succeeded), string(build.Failed), string(build.Canceled)}

// Filtered listings read this many builds a page, at most filterPages
// pages per answer: a filter shows the matches among the builds it read,
// and "Older builds" goes on from there.
const (
	filterPageSize = 100
	filterPages    = 5
)

// listBuilds is one page of a project's builds, newest first, and the
// token of the next: listPage builds, or with a status, those of that
// status among up to filterPages pages of filterPageSize.
func (d *Dashboard) listBuilds(ctx context.Context, p auth.Principal, projectID, token string, status build.Status) ([]build.Build, string, error) {
	if status == "" {
		return d.cfg.Builds.Page(ctx, p, projectID, listPage, token)
	}
	var out []build.Build
	for range filterPages {
		page, next, err := d.cfg.Builds.Page(ctx, p, projectID, filterPageSize, token)
		if err != nil {
			return nil, "", err
		}
		for _, b := range page {
			if b.Status == status {
				out = append(out, b)
			}
		}
		token = next
		if next == "" || len(out) >= listPage {
			break
		}
	}
	return out, token, nil
}

type buildData struct {
	Build     build.Build
	Row       buildRow
	ProjectID string
	// Steps are the waterfall as the page is served: a list the script
	// replaces with its bars (and readers without scripts keep).
	Steps    []liveStep
	CanAct   bool // Cancel and Rebuild are offered (a source build, a runner)
	CanShare bool
	// Options are the build's options as the client reported them, or a
	// source build's request (Dockerfile, target, arguments, platforms;
	// never secrets), indented; "" when unknown.
	Options  string
	ShareURL string // after Share
	Unshared bool   // after StopSharing
	// Shared: the page of a share link — read-only, no log, no project,
	// no forms. Live is what the page's script polls.
	Shared bool
	Live   string
}

func (d *Dashboard) buildPage(w http.ResponseWriter, r *http.Request) {
	s, p, ok := d.session(w, r, true)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	data, err := d.buildData(ctx, p, r.PathValue("id"))
	if err != nil {
		d.failErr(w, r, s, "build", err)
		return
	}
	d.render(w, r, http.StatusOK, "build", s, "Build "+data.Build.ID, data)
}

func (d *Dashboard) buildData(ctx context.Context, p auth.Principal, id string) (buildData, error) {
	b, st, err := d.cfg.Builds.Stats(ctx, p, id)
	if err != nil {
		return buildData{}, err
	}
	steps, err := d.cfg.Builds.Steps(ctx, p, id)
	if err != nil {
		return buildData{}, err
	}
	b.Error = clip(b.Error)
	opts := b.Options
	if b.IsSource() {
		opts = b.Spec
	}
	return buildData{Build: b, Row: d.rowOf(b, st, d.cfg.Now()), ProjectID: b.ProjectID, Steps: liveSteps(steps, b.Terminal()),
		Live: "/builds/" + b.ID + "/live", CanAct: b.IsSource() && d.cfg.Runner != nil && p.CanDriveBuild(b), CanShare: p.CanManage(b), Options: indentJSON(opts)}, nil
}

// indentJSON is raw indented for reading; "" for nothing or not JSON.
func indentJSON(raw string) string {
	var buf bytes.Buffer
	if raw == "" || raw == "null" || json.Indent(&buf, []byte(raw), "", "  ") != nil {
		return ""
	}
	return buf.String()
}

// shareBuild makes the build's read-only share link (build.Service.Share,
// as ShareBuild) and shows it on the build's page; at .../unshare it
// revokes it (StopSharingBuild).
func (d *Dashboard) shareBuild(w http.ResponseWriter, r *http.Request) {
	s, p, ok := d.session(w, r, true)
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := d.checkCSRF(r, s); err != nil {
		d.fail(w, r, s, http.StatusForbidden, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	unshare := strings.HasSuffix(r.URL.Path, "/unshare")
	var link string
	var err error
	if unshare {
		err = d.cfg.Builds.StopSharing(ctx, p, r.PathValue("id"))
	} else {
		link, err = d.cfg.Builds.Share(ctx, p, r.PathValue("id"))
	}
	if errors.Is(err, errdefs.ErrPermission) {
		d.fail(w, r, s, http.StatusForbidden, err.Error())
		return
	}
	if err != nil {
		d.failErr(w, r, s, "build", err)
		return
	}
	data, err := d.buildData(ctx, p, r.PathValue("id"))
	if err != nil {
		d.failErr(w, r, s, "build", err)
		return
	}
	data.ShareURL, data.Unshared = link, unshare
	d.render(w, r, http.StatusOK, "build", s, "Build "+data.Build.ID, data)
}

// liveBuild is what the build page's script reads every second.
type liveBuild struct {
	ID         string     `json:"id"`
	ProjectID  string     `json:"project_id"`
	Status     string     `json:"status"`
	Terminal   bool       `json:"terminal"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	DurationMs int64      `json:"duration_ms"`
	Error      string     `json:"error,omitempty"`
	Cached     int        `json:"cached_steps"`
	Total      int        `json:"total_steps"`
	SavedMs    int64      `json:"saved_ms"`
	Ahead      int        `json:"queue_ahead"` // builds ahead of a queued one; -1: not queued
}

type liveStep struct {
	Digest      string     `json:"digest"`
	Name        string     `json:"name"`
	State       string     `json:"state"` // cached, done, failed, running, waiting
	StartedAt   *time.Time `json:"started_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
	DurationMs  int64      `json:"duration_ms"`
	Error       string     `json:"error,omitempty"`
}

type liveLine struct {
	Seq     int       `json:"seq"`
	Digest  string    `json:"digest"`
	At      time.Time `json:"at"`
	Message string    `json:"message"`
}

type liveResources struct {
	Samples      int       `json:"samples"`
	PeakCPU      float64   `json:"peak_cpu_cores"`
	PeakMemory   int64     `json:"peak_memory_bytes"`
	MemoryLimit  int64     `json:"memory_limit_bytes"`
	OOM          string    `json:"oom,omitempty"`        // the last OOM kill's message
	NearLimit    string    `json:"near_limit,omitempty"` // memory above 90 % of the limit
	CPUSeries    []float64 `json:"cpu"`
	MemorySeries []int64   `json:"memory"`
}

type liveView struct {
	Build     liveBuild     `json:"build"`
	Steps     []liveStep    `json:"steps"`
	Logs      []liveLine    `json:"logs"`
	Next      int           `json:"next"` // pass as ?after= for the lines after these
	More      bool          `json:"more"` // more lines are stored than sent
	Resources liveResources `json:"resources"`
	// History is, on the first poll (after=0), each step's runs in the
	// project's earlier builds, by step name, newest first.
	History map[string][]stepRun `json:"history,omitempty"`
}

// stepRun is one earlier run of a step of the same name.
type stepRun struct {
	Build string `json:"build"`
	State string `json:"state"` // cached, done, failed
	Ms    int64  `json:"ms"`
}

// historyBuilds is how many earlier builds a step's history looks at.
const historyBuilds = 10

// liveLogPage is how many log lines one poll sends at most.
const liveLogPage = 2000

// maxSeries bounds the resource samples a poll sends (evenly thinned).
const maxSeries = 300

// liveBytes bounds the log lines of one poll's answer, as JSON-encoded:
// past it the poll stops adding lines and sets more, and the page asks
// again. A tenant's lines are unbounded in size (the depot API stores
// 16 MiB ones); each is clipped to maxText first.
const liveBytes = 1 << 20

// maxText bounds one tenant text the dashboard shows: a log line, a
// step's error, a build's error; the rest is dropped for clippedMark.
const maxText = 16 << 10

const clippedMark = "… (clipped)"

// clip is a tenant's text as the dashboard shows it: cut to maxText
// bytes (at a rune's start) and marked, then cleaned (tenantText).
func clip(s string) string {
	if len(s) > maxText {
		cut := maxText
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + clippedMark
	}
	return tenantText(s)
}

// tenantText drops what a tenant's text could use to paint over or
// reorder the page's: ANSI escape sequences (CSI, OSC, two-byte ones),
// C0 controls but \t and \n (so \r too), DEL and C1 controls; and makes
// the bidirectional overrides and isolates (U+202A-202E, U+2066-2069)
// visible as "<U+202E>".
func tenantText(s string) string {
	clean := true
	for _, r := range s {
		if (r < 0x20 && r != '\t' && r != '\n') || (r >= 0x7f && r <= 0x9f) || isBidi(r) || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b: // ESC: skip the sequence it starts
			i += n
			if i >= len(s) {
				continue
			}
			switch s[i] {
			case '[': // CSI: parameters, intermediates, one final byte
				i++
				for i < len(s) && (s[i] < 0x40 || s[i] > 0x7e) && s[i] >= 0x20 {
					i++
				}
				if i < len(s) && s[i] >= 0x40 && s[i] <= 0x7e {
					i++ // the final byte; a control ends it unconsumed
				}
			case ']', 'P', '_', '^', 'X': // OSC and other strings: to BEL or ST
				i++
				for i < len(s) && s[i] != 0x07 && s[i] != 0x1b {
					i++
				}
				if i < len(s) && s[i] == 0x07 {
					i++
				} else if i+1 < len(s) && s[i+1] == '\\' {
					i += 2
				}
			default: // a two-byte escape
				if s[i] >= 0x20 && s[i] < 0x7f {
					i++
				}
			}
			continue
		case r == utf8.RuneError && n == 1:
			b.WriteRune(utf8.RuneError)
		case (r < 0x20 && r != '\t' && r != '\n') || (r >= 0x7f && r <= 0x9f):
		case isBidi(r):
			fmt.Fprintf(&b, "<U+%04X>", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func isBidi(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

// jsonSize is how many bytes s takes as a JSON string.
func jsonSize(s string) int {
	b, _ := json.Marshal(s)
	return len(b)
}

// buildLive answers the build page's poll: the build, its steps, its log
// lines after ?after= and its resource peaks, as JSON.
func (d *Dashboard) buildLive(w http.ResponseWriter, r *http.Request) {
	_, p, ok := d.session(w, r, false)
	if !ok {
		return
	}
	session := sessionKey(d.cookieID(r))
	if ok, wait := d.livePolls.allow(session); !ok {
		d.secure(w)
		retryAfter(w, wait)
		http.Error(w, "too many polls; wait", http.StatusTooManyRequests)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	after, _ := strconv.Atoi(r.URL.Query().Get("after"))
	v, err := d.live(ctx, session, p, r.PathValue("id"), max(after, 0))
	if err != nil {
		d.secure(w)
		switch {
		case errdefs.IsNotFound(err) || errors.Is(err, errdefs.ErrPermission) || errors.Is(err, errdefs.ErrInvalid):
			http.Error(w, "no such build", http.StatusNotFound)
		default:
			d.cfg.Logger.ErrorContext(ctx, "dashboard: live build", "err", err)
			http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		}
		return
	}
	d.secure(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		d.cfg.Logger.DebugContext(ctx, "dashboard: live build: write", "err", err)
	}
}

// live is one poll of session's for build id.
func (d *Dashboard) live(ctx context.Context, session string, p auth.Principal, id string, after int) (liveView, error) {
	// The build is read (and authorized) first: if it had ended, all it
	// recorded is stored before, and the reads below see all of it (but
	// for the steps and resources stepsOf reuses for a moment).
	b, st, err := d.cfg.Builds.Stats(ctx, p, id)
	if err != nil {
		return liveView{}, err
	}
	steps, res, err := d.stepsOf(ctx, p, b)
	if err != nil {
		return liveView{}, err
	}
	lines, err := d.cfg.Logs.ListBuildLogs(ctx, b.ID, after, liveLogPage+1)
	if err != nil {
		return liveView{}, err
	}
	now := d.cfg.Now()
	row := d.rowOf(b, st, now)
	v := liveView{Build: liveBuild{ID: b.ID, ProjectID: b.ProjectID, Status: string(b.Status), Terminal: b.Terminal(),
		CreatedAt: b.CreatedAt, StartedAt: timePtr(b.StartedAt), FinishedAt: timePtr(b.FinishedAt),
		DurationMs: row.Duration.Milliseconds(), Error: clip(b.Error), Cached: st.CachedSteps, Total: st.TotalSteps,
		SavedMs: st.Saved.Milliseconds(), Ahead: row.Ahead}, Steps: liveSteps(steps, b.Terminal()), Logs: []liveLine{}, Next: after}
	if len(lines) > liveLogPage {
		lines, v.More = lines[:liveLogPage], true
	}
	size := 0
	for _, l := range lines {
		msg := clip(l.Message)
		// The line's JSON: its message, and its other fields, short.
		if size += jsonSize(msg) + len(l.Digest) + 100; size > liveBytes && len(v.Logs) > 0 {
			v.More = true
			break
		}
		v.Logs = append(v.Logs, liveLine{Seq: l.Seq, Digest: l.Digest, At: l.At, Message: msg})
		v.Next = l.Seq
	}
	v.Resources = resourcesOf(res)
	if after == 0 {
		if v.History, err = d.historyFor(ctx, session, p, b, v.Steps); err != nil {
			return liveView{}, err
		}
	}
	return v, nil
}

// history finds the steps of b (by name) in the project's builds created
// before it, up to historyBuilds of them.
func (d *Dashboard) history(ctx context.Context, p auth.Principal, b build.Build, steps []liveStep) (map[string][]stepRun, error) {
	want := map[string]bool{}
	for _, s := range steps {
		want[s.Name] = true
	}
	out := map[string][]stepRun{}
	if len(want) == 0 {
		return out, nil
	}
	recent, _, err := d.cfg.Builds.Page(ctx, p, b.ProjectID, 3*historyBuilds, "")
	if err != nil {
		return nil, err
	}
	seen := 0
	for _, other := range recent {
		if other.ID == b.ID || !other.CreatedAt.Before(b.CreatedAt) {
			continue
		}
		if seen++; seen > historyBuilds {
			break
		}
		all, err := d.cfg.Builds.Steps(ctx, p, other.ID)
		if errdefs.IsNotFound(err) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		for _, s := range liveSteps(all, true) {
			if !want[s.Name] || s.State == "waiting" {
				continue
			}
			out[s.Name] = append(out[s.Name], stepRun{Build: other.ID, State: s.State, Ms: s.DurationMs})
		}
	}
	return out, nil
}

// liveSteps are the steps the waterfall shows: the build's counted steps
// (its Dockerfile instructions; build.CountedSteps), and any other step
// that failed, ordered by start (not started last).
func liveSteps(all []build.Step, ended bool) []liveStep {
	counted := map[string]bool{}
	for _, s := range build.CountedSteps(all) {
		counted[s.Digest] = true
	}
	out := []liveStep{}
	for _, s := range all {
		if !counted[s.Digest] && s.Error == "" {
			continue
		}
		ls := liveStep{Digest: s.Digest, Name: clip(s.Name), StartedAt: timePtr(s.StartedAt), CompletedAt: timePtr(s.CompletedAt), Error: clip(s.Error)}
		switch {
		case s.Error != "":
			ls.State = "failed"
		case s.Cached:
			ls.State = "cached"
		case !s.CompletedAt.IsZero():
			ls.State = "done"
		case !s.StartedAt.IsZero() && !ended:
			ls.State = "running"
		default:
			ls.State = "waiting" // not started (or never finished)
		}
		if !s.StartedAt.IsZero() && s.CompletedAt.After(s.StartedAt) {
			ls.DurationMs = s.CompletedAt.Sub(s.StartedAt).Milliseconds()
		}
		out = append(out, ls)
	}
	sortSteps(out)
	return out
}

func resourcesOf(res build.Resources) liveResources {
	out := liveResources{Samples: len(res.Samples), CPUSeries: []float64{}, MemorySeries: []int64{}}
	step := max(1, (len(res.Samples)+maxSeries-1)/maxSeries)
	for i, s := range res.Samples {
		out.PeakCPU = max(out.PeakCPU, s.CPUCores)
		out.PeakMemory = max(out.PeakMemory, s.Memory, s.MemoryPeak)
		if s.MemoryLimit > 0 {
			out.MemoryLimit = s.MemoryLimit
		}
		if i%step == 0 {
			out.CPUSeries = append(out.CPUSeries, s.CPUCores)
			out.MemorySeries = append(out.MemorySeries, s.Memory)
		}
	}
	for _, e := range res.Events {
		switch e.Kind {
		case build.EventOOMKill:
			out.OOM = e.Message
		case build.EventMemoryHigh:
			out.NearLimit = e.Message
		}
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// act is a POST on one build (cancel, rebuild): the session, its
// anti-forgery token and the runner's own authorization.
func (d *Dashboard) act(w http.ResponseWriter, r *http.Request, do func(ctx context.Context, p auth.Principal, id string) (string, error)) {
	s, p, ok := d.session(w, r, true)
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := d.checkCSRF(r, s); err != nil {
		d.fail(w, r, s, http.StatusForbidden, err.Error())
		return
	}
	if d.cfg.Runner == nil {
		d.fail(w, r, s, http.StatusNotFound, "This server runs no source builds.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	to, err := do(ctx, p, r.PathValue("id"))
	if errors.Is(err, errdefs.ErrPermission) {
		d.fail(w, r, s, http.StatusForbidden, err.Error())
		return
	}
	if err != nil {
		d.failErr(w, r, s, "build", err)
		return
	}
	d.secure(w)
	http.Redirect(w, r, "/builds/"+to, http.StatusSeeOther)
}

func (d *Dashboard) cancelBuild(w http.ResponseWriter, r *http.Request) {
	d.act(w, r, func(ctx context.Context, p auth.Principal, id string) (string, error) {
		b, err := d.cfg.Runner.Cancel(ctx, p, id)
		return b.ID, err
	})
}

func (d *Dashboard) rebuildBuild(w http.ResponseWriter, r *http.Request) {
	d.act(w, r, func(ctx context.Context, p auth.Principal, id string) (string, error) {
		b, err := d.cfg.Runner.Rebuild(ctx, p, id)
		return b.ID, err
	})
}

type auditData struct {
	Entries []auditRow
	Next    string
	Days    int
}

type auditRow struct {
	audit.Entry
	Details string // Detail as "key=value" pairs, sorted
}

// auditDays is how far back the audit page starts.
const auditDays = 7

// auditPage lists the organization's audit log of the last auditDays,
// oldest first, 100 a page (as ListAuditEvents).
func (d *Dashboard) auditPage(w http.ResponseWriter, r *http.Request) {
	s, p, ok := d.session(w, r, true)
	if !ok {
		return
	}
	if d.cfg.Audit == nil || !p.IsOrg() {
		d.fail(w, r, s, http.StatusNotFound, "The audit log is for organization tokens.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	entries, next, err := d.cfg.Audit.List(ctx, p, audit.Query{Since: d.cfg.Now().Add(-auditDays * 24 * time.Hour),
		PageSize: 100, PageToken: r.URL.Query().Get("page")})
	if err != nil {
		d.failErr(w, r, s, "audit page", err)
		return
	}
	data := auditData{Next: next, Days: auditDays}
	for _, e := range entries {
		keys := slices.Sorted(maps.Keys(e.Detail))
		pairs := make([]string, 0, len(keys))
		for _, k := range keys {
			pairs = append(pairs, k+"="+e.Detail[k])
		}
		data.Entries = append(data.Entries, auditRow{Entry: e, Details: strings.Join(pairs, " ")})
	}
	d.render(w, r, http.StatusOK, "audit", s, "Audit log", data)
}
