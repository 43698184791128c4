package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// Issue 17: the dashboard, in a real browser. Debian's headless Chromium
// is driven through the DevTools protocol (chromedp); every request it
// makes is recorded, and none may leave kiln's address.

// slowDockerfile's RUN steps print a line a second for a few seconds, so
// a page watching the build sees steps start and lines arrive.
const slowDockerfile = baseStages + `
FROM busybox
RUN for i in 1 2 3; do echo "slow-one line $i"; sleep 1; done
RUN for i in 1 2 3; do echo "slow-two line $i"; sleep 1; done
RUN for i in 1 2 3; do echo "slow-three line $i"; sleep 1; done
RUN for i in 1 2 3; do echo "slow-four line $i"; sleep 1; done
`

const failingDockerfile = baseStages + `
FROM busybox
RUN echo "about to fail" && exit 3
`

// browserPage is one headless Chromium tab, and every request it made.
type browserPage struct {
	t         *testing.T
	ctx       context.Context
	base      string
	artifacts string
	mu        sync.Mutex
	requests  []string
}

// newBrowser starts headless Chromium (its own profile, no proxy, as root
// without the sandbox: the tests run as root) and opens a tab.
func newBrowser(t *testing.T, base string) *browserPage {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		testenv.Missing(t, "chromium not found: apt-get install chromium (hack/setup.sh --tests installs it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900), chromedp.Flag("no-proxy-server", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browserPage{t: t, ctx: ctx, base: base, artifacts: artifactDir(t, "dashboard")}
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			b.mu.Lock()
			b.requests = append(b.requests, e.Request.URL)
			b.mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

// freshContext opens a tab in a new browser context of b's Chromium: no
// cookies, no storage, as a stranger's browser. Its requests are recorded
// apart; it writes its screenshots with b's.
func (b *browserPage) freshContext() *browserPage {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	b.t.Cleanup(cancel)
	f := &browserPage{t: b.t, ctx: ctx, base: b.base, artifacts: b.artifacts}
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			f.mu.Lock()
			f.requests = append(f.requests, e.Request.URL)
			f.mu.Unlock()
		}
	}); err != nil {
		b.t.Fatalf("open a fresh browser context: %v", err)
	}
	return f
}

// artifactDir is where a test leaves files for people to look at:
// $KILN_ARTIFACTS/<name>, else a directory kept after the run; the log
// says which.
func artifactDir(t *testing.T, name string) string {
	t.Helper()
	var dir string
	if root := os.Getenv("KILN_ARTIFACTS"); root != "" {
		dir = filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		var err error
		if dir, err = os.MkdirTemp("", "kiln-artifacts-"+name+"-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("artifacts (screenshots) in %s", dir)
	return dir
}

func (b *browserPage) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// open navigates to path and returns the HTTP status of the page.
func (b *browserPage) open(path string) int64 {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	res, err := chromedp.Run(ctx, chromedp.NavigateResponse(b.base+path))
	if err != nil {
		b.t.Fatalf("browser: open %s: %v", path, err)
	}
	return res.Status
}

func evalIn[T any](b *browserPage, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("browser: evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot saves the whole page as <name>.png in the artifacts.
func (b *browserPage) screenshot(name string) {
	b.t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.artifacts, name+".png"), buf, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browserPage) signIn(token string) {
	b.t.Helper()
	b.open("/")
	b.do("sign in", chromedp.WaitVisible(chromedp.ID("token")), chromedp.SetValue(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("sign-in")), chromedp.WaitVisible(chromedp.ID("sign-out")))
}

// offHost lists the requests the browser made to anything but kiln.
func (b *browserPage) offHost() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var off []string
	for _, u := range b.requests {
		if !strings.HasPrefix(u, b.base+"/") {
			off = append(off, u)
		}
	}
	return off
}

// buildView is what the build page shows, read from its DOM.
type buildView struct {
	Status string   `json:"status"`
	States []string `json:"states"` // the waterfall's steps' states, in order
	Errors []string `json:"errors"` // the waterfall's steps' errors
	Lines  []string `json:"lines"`  // the log's lines
	Banner string   `json:"banner"` // the error banner, "" when hidden
	Marker int      `json:"marker"` // set by the test: 0 after a reload
	Polls  int      `json:"polls"`  // answers of the live endpoint the script drew
}

const readBuildView = `(() => ({
  status: document.getElementById("status").textContent,
  states: [...document.querySelectorAll("#waterfall li")].map(li => li.dataset.state),
  errors: [...document.querySelectorAll("#waterfall li .err")].map(e => e.textContent),
  lines: [...document.querySelectorAll("#log .line")].map(l => l.textContent),
  banner: document.getElementById("error-banner").hidden ? "" : document.getElementById("error-banner").textContent,
  marker: window.kilnTestMarker || 0,
  polls: Number(document.getElementById("build").dataset.polls || 0),
}))()`

func terminalStatus(s string) bool {
	return s == "succeeded" || s == "failed" || s == "canceled"
}

// waitBuild reads the build page until its script has drawn what the
// server answered and cond holds.
func (b *browserPage) waitBuild(timeout time.Duration, what string, cond func(buildView) bool) buildView {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := evalIn[buildView](b, readBuildView)
		if v.Polls > 0 && cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out after %s waiting for the build page to show %s; it shows %+v", timeout, what, v)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// chartView is the project page's cache-hit chart.
type chartView struct {
	Builds []string `json:"builds"`
	Values []int    `json:"values"`
	Listed []string `json:"listed"` // the builds list's build ids
}

const readChartView = `(() => ({
  builds: [...document.querySelectorAll("#chart-cache rect")].map(r => r.dataset.build),
  values: [...document.querySelectorAll("#chart-cache rect")].map(r => Number(r.dataset.value)),
  listed: [...document.querySelectorAll("#builds tbody tr")].map(r => r.dataset.build),
}))()`

func TestDashboard(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	projA := s.createProject(t, "dash-a")
	projB := s.createProject(t, "dash-b")
	tokA := s.projectToken(t, projA)
	b := newBrowser(t, s.URL)

	// Another project's build, which project A's session must not see.
	otherDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo other\n"})
	otherID := buildIDOf(t, s.mustKiln(t, otherDir, "build", "--project", projB, "--progress", "plain", "."))

	// Sign in with project A's token: its page, no builds yet.
	b.signIn(tokA)
	if loc := evalIn[string](b, "location.pathname"); loc != "/projects/"+projA {
		t.Fatalf("signed in to %s, want /projects/%s", loc, projA)
	}
	b.screenshot("01-project-empty")

	// A slow build runs; the project page lists it and the build page
	// follows it without a reload.
	slowDir := writeContext(t, map[string]string{"Dockerfile": slowDockerfile})
	slow := make(chan result, 1)
	go func() { slow <- s.kiln(t, slowDir, nil, "build", "--project", projA, "--progress", "plain", ".") }()
	var slowID string
	deadline := time.Now().Add(2 * time.Minute)
	for slowID == "" {
		b.open("/projects/" + projA)
		if ids := evalIn[chartView](b, readChartView).Listed; len(ids) > 0 {
			slowID = ids[0]
		} else if time.Now().After(deadline) {
			t.Fatal("the running build never showed on the project page")
		} else {
			time.Sleep(300 * time.Millisecond)
		}
	}
	if code := b.open("/builds/" + slowID); code != 200 {
		t.Fatalf("the build page answered %d", code)
	}
	evalIn[int](b, "window.kilnTestMarker = 1")
	// Watch: the waterfall grows and lines arrive while it runs.
	var stepCounts, lineCounts []int
	shotRunning := false
	v := b.waitBuild(3*time.Minute, "the build's end", func(v buildView) bool {
		if v.Status == "running" {
			started := 0
			for _, st := range v.States {
				if st != "waiting" {
					started++
				}
			}
			if len(stepCounts) == 0 || stepCounts[len(stepCounts)-1] != started {
				stepCounts = append(stepCounts, started)
			}
			if len(lineCounts) == 0 || lineCounts[len(lineCounts)-1] != len(v.Lines) {
				lineCounts = append(lineCounts, len(v.Lines))
			}
			if !shotRunning && started >= 3 {
				b.screenshot("02-build-running")
				shotRunning = true
			}
		}
		return terminalStatus(v.Status)
	})
	r := <-slow
	if r.Err != nil {
		t.Fatalf("the slow build failed: %v\n%s", r.Err, tail(r.Stderr, 3000))
	}
	if v.Status != "succeeded" {
		t.Fatalf("the build page says %q for a build that succeeded", v.Status)
	}
	// The follower stores the builder's last steps a moment after the end.
	v = b.waitBuild(30*time.Second, "every step ended", func(v buildView) bool {
		return len(v.States) >= 6 && !slices.ContainsFunc(v.States, func(s string) bool { return s != "done" && s != "cached" })
	})
	t.Logf("while the build ran, the page showed %v steps started and %v log lines", stepCounts, lineCounts)
	if len(stepCounts) < 3 || !slices.IsSorted(stepCounts) {
		t.Errorf("the waterfall did not grow while the build ran: started steps seen %v", stepCounts)
	}
	if len(lineCounts) < 3 || !slices.IsSorted(lineCounts) {
		t.Errorf("log lines did not arrive while the build ran: line counts seen %v", lineCounts)
	}
	if v.Marker != 1 {
		t.Errorf("the build page was reloaded while following the build")
	}
	for i := 1; i <= 3; i++ {
		for _, name := range []string{"one", "two", "three", "four"} {
			want := fmt.Sprintf("slow-%s line %d", name, i)
			if !slices.ContainsFunc(v.Lines, func(l string) bool { return strings.HasSuffix(l, want) }) {
				t.Errorf("the log lacks %q: %q", want, v.Lines)
			}
		}
	}
	b.screenshot("03-build-succeeded")

	// Another project's build, by its URL, is 404, as is one that does
	// not exist, and neither page names it.
	for _, id := range []string{otherID, "nosuchbuild"} {
		if code := b.open("/builds/" + id); code != 404 {
			t.Errorf("project A's session opened /builds/%s: %d, want 404", id, code)
		}
	}
	b.screenshot("04-other-project-build-404")
	if code := b.open("/projects/" + projB); code != 404 {
		t.Errorf("project A's session opened project B's page: %d, want 404", code)
	}

	// A failed build shows its error at the failing step.
	failDir := writeContext(t, map[string]string{"Dockerfile": failingDockerfile})
	fr := s.kiln(t, failDir, nil, "build", "--project", projA, "--progress", "plain", ".")
	if fr.Err == nil {
		t.Fatal("the failing build succeeded")
	}
	failID := buildIDOf(t, fr)
	b.open("/builds/" + failID)
	v = b.waitBuild(30*time.Second, "the failed step's error", func(v buildView) bool {
		return v.Status == "failed" && slices.Contains(v.States, "failed") && strings.Contains(v.Banner, "exit code: 3")
	})
	if !slices.ContainsFunc(v.Errors, func(e string) bool { return strings.Contains(e, "exit code: 3") }) {
		t.Errorf("the failing step shows no error: %+v", v)
	}
	if !strings.Contains(v.Banner, "exit 3") {
		t.Errorf("the banner does not name the failing step: %q", v.Banner)
	}
	if !slices.ContainsFunc(v.Lines, func(l string) bool { return strings.HasSuffix(l, "about to fail") }) {
		t.Errorf("the failing step's output is not in the log: %q", v.Lines)
	}
	b.screenshot("05-build-failed")

	// A cached rebuild: every step cached, and the cache-hit chart moves.
	b.open("/projects/" + projA)
	before := evalIn[chartView](b, readChartView)
	cached := buildIDOf(t, s.mustKiln(t, slowDir, "build", "--project", projA, "--progress", "plain", "."))
	b.open("/builds/" + cached)
	v = b.waitBuild(30*time.Second, "every step cached", func(v buildView) bool {
		return terminalStatus(v.Status) && len(v.States) >= 6 && !slices.ContainsFunc(v.States, func(s string) bool { return s != "cached" })
	})
	if v.Status != "succeeded" {
		t.Errorf("the cached rebuild's page says %q", v.Status)
	}
	// Each step shows its earlier runs: the first build ran them.
	if n := evalIn[int](b, `document.querySelectorAll("#waterfall .hist").length`); n < 6 {
		t.Errorf("%d steps show their history, want every one of the 6", n)
	}
	b.screenshot("06-build-cached")
	b.open("/projects/" + projA)
	after := evalIn[chartView](b, readChartView)
	t.Logf("cache-hit chart: before %v %v, after %v %v", before.Builds, before.Values, after.Builds, after.Values)
	if len(after.Values) != len(before.Values)+1 || after.Builds[len(after.Builds)-1] != cached || after.Values[len(after.Values)-1] != 100 ||
		before.Values[len(before.Values)-1] == 100 {
		t.Errorf("the cache-hit chart did not move to 100%% for the cached rebuild: before %v, after %v", before.Values, after.Values)
	}
	// The list holds this project's builds and no other's.
	for _, id := range []string{slowID, failID, cached} {
		if !slices.Contains(after.Listed, id) {
			t.Errorf("the project page does not list build %s: %v", id, after.Listed)
		}
	}
	if slices.Contains(after.Listed, otherID) || len(after.Listed) != 3 {
		t.Errorf("the project page lists %v, want exactly project A's three builds", after.Listed)
	}
	b.screenshot("07-project-after-cached-rebuild")

	// A share link of the slow build, opened by someone without a
	// session: the build page read-only, its waterfall and resource peaks,
	// no log, no button, nothing from another host.
	b.open("/builds/" + slowID)
	b.do("share the build", chromedp.Click(chromedp.ID("share")), chromedp.WaitVisible(chromedp.ID("share-url")))
	link := evalIn[string](b, `document.querySelector("#share-url a").href`)
	if !strings.HasPrefix(link, s.URL+"/shared/") {
		t.Fatalf("share link %q, want under %s/shared/", link, s.URL)
	}
	b.screenshot("08-build-shared")
	anon := b.freshContext()
	if code := anon.open(strings.TrimPrefix(link, s.URL)); code != 200 {
		t.Fatalf("the share link answered %d in a fresh browser", code)
	}
	sv := anon.waitBuild(30*time.Second, "the shared build's steps", func(v buildView) bool {
		return v.Status == "succeeded" && len(v.States) >= 6 && !slices.ContainsFunc(v.States, func(s string) bool { return s != "done" && s != "cached" })
	})
	// The script drew the waterfall: a bar for each executed step (the
	// four RUNs at least).
	if n := evalIn[int](anon, `document.querySelectorAll("#waterfall li .seg:not([hidden])").length`); n < 4 {
		t.Errorf("the shared page's waterfall draws %d bars, want one per executed step", n)
	}
	if res := evalIn[string](anon, `document.getElementById("resources").textContent`); !strings.Contains(res, "Peak memory") && !strings.Contains(res, "No samples") {
		t.Errorf("the shared page shows no resource peaks: %q", res)
	}
	for what, expr := range map[string]string{
		"a log":              `!!document.getElementById("log") || document.querySelectorAll(".line").length > 0`,
		"a button or form":   `document.querySelectorAll("button, form, input").length > 0`,
		"a link to projects": `!!document.querySelector('a[href^="/projects"]')`,
		"its output":         `document.body.textContent.includes("slow-one line 1")`,
	} {
		if evalIn[bool](anon, expr) {
			t.Errorf("the shared page shows %s", what)
		}
	}
	t.Logf("the shared page shows %d steps %v", len(sv.States), sv.States)
	anon.screenshot("09-shared-build")
	if off := anon.offHost(); len(off) > 0 {
		t.Errorf("the shared page made requests to hosts other than kiln's (%s): %q", s.URL, off)
	}
	// Revoked, the link answers 404.
	b.do("stop sharing", chromedp.Click(chromedp.ID("unshare")), chromedp.WaitVisible(chromedp.ID("unshared")))
	if code := anon.open(strings.TrimPrefix(link, s.URL)); code != 404 {
		t.Errorf("the revoked share link answered %d, want 404", code)
	}

	// Signing out (a form with the session's anti-forgery token) ends the
	// session.
	b.do("sign out", chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("token")))
	if code := b.open("/builds/" + slowID); code != 200 || evalIn[string](b, "location.pathname") != "/sign-in" {
		t.Errorf("after signing out, the build page did not send the browser to sign in")
	}
	b.screenshot("10-sign-in")
	// Without a token: a device login, which an administrator approves
	// from a terminal; the browser follows by itself.
	b.do("start a device sign-in", chromedp.Click(chromedp.ID("sign-in-device")), chromedp.WaitVisible(chromedp.ID("approval-id")))
	approval := strings.TrimSpace(evalIn[string](b, `document.getElementById("approval-id").textContent`))
	b.screenshot("11-device-sign-in")
	s.mustKiln(t, t.TempDir(), "login", "--approve", approval)
	eventually(t, 30*time.Second, "the browser signed in by the approval", func() bool {
		// The page navigates meanwhile: an evaluation may fail.
		path, err := chromedp.Run(b.ctx, chromedp.Evaluate[string]("location.pathname"))
		return err == nil && path == "/projects"
	})
	b.do("the projects page", chromedp.WaitVisible(chromedp.ID("projects")))
	for _, p := range []string{projA, projB} {
		if !evalIn[bool](b, fmt.Sprintf(`!!document.querySelector('#projects a[href="/projects/%s"]')`, p)) {
			t.Errorf("the organization's projects page does not list %s", p)
		}
	}
	b.screenshot("12-organization-projects")
	// The audit log has the project token this test made.
	if code := b.open("/audit"); code != 200 {
		t.Errorf("the audit page: %d", code)
	}
	if !evalIn[bool](b, fmt.Sprintf(`[...document.querySelectorAll("#audit tr")].some(r => r.textContent.includes("token_created") && r.textContent.includes(%q))`, projA)) {
		t.Errorf("the audit page does not show the project token made for %s", projA)
	}
	b.screenshot("13-audit-log")

	// On a phone's screen: the failed build, readable without sideways
	// scrolling of the page itself.
	b.do("phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	b.open("/builds/" + failID)
	b.waitBuild(30*time.Second, "the failed step", func(v buildView) bool { return slices.Contains(v.States, "failed") })
	if wide := evalIn[int](b, "document.documentElement.scrollWidth"); wide > 390 {
		t.Errorf("on a 390px-wide screen the build page is %dpx wide", wide)
	}
	b.screenshot("14-build-failed-phone")

	if off := b.offHost(); len(off) > 0 {
		t.Errorf("the browser made requests to hosts other than kiln's (%s): %q", s.URL, off)
	}
	u, _ := url.Parse(s.URL)
	b.mu.Lock()
	t.Logf("the browser made %d requests, all to %s", len(b.requests), u.Host)
	b.mu.Unlock()
}
