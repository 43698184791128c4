// Command bench measures kiln against plain BuildKit on the same machine:
// plain buildctl → a local buildkitd started with the flags and
// buildkitd.toml of kiln's own builders, against kiln serve + kiln build
// (and kiln's API for builder acquisition), and distribution used directly
// against kiln's registry. It starts everything itself on loopback in a
// temporary directory, bounds every step in time, and removes what it
// started (processes by PID, mounts, files) at the end.
//
//	go run ./bench            # full run (≈ 15 min budget): bench/RESULTS.md, bench/results.json
//	go run ./bench -smoke     # tiny sizes, one run each, results in a temp dir
//	go run ./bench -soak      # the soak (soak.go): 500 builds over 20 projects, fds/goroutines/RSS/disk at the end
//
// The workloads (W1–W5) and the targets they are checked against are those
// of kiln's performance budget (docs/benchmarks.md); W6 (w6.go) measures
// the control plane on SQLite against Postgres and one replica against
// two, without a target. See bench/RESULTS.md for the last full run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// config is what the command line chose.
type config struct {
	smoke     bool
	runs      int           // timed runs per series (per side)
	outDir    string        // where RESULTS.md and results.json go
	only      string        // comma-separated workloads to run ("" = all)
	budget    time.Duration // the whole run, setup and cleanup included
	kilnBin   string        // "" → build ./cmd/kiln into the temp dir
	buildkitd string
	buildctl  string
	keep      bool // keep the temp dir (logs, every build's output) after the run
	disk      bool // keep daemon state on disk instead of a tmpfs
}

func main() {
	if serveRole() {
		return
	}
	var cfg config
	flag.BoolVar(&cfg.smoke, "smoke", false, "tiny sizes, one run per series, results in a temp dir (what CI runs)")
	flag.IntVar(&cfg.runs, "runs", 0, "timed runs per series and side (default 10; 1 with -smoke)")
	flag.StringVar(&cfg.outDir, "out", "", "directory for RESULTS.md and results.json (default bench/, or a temp dir with -smoke)")
	flag.StringVar(&cfg.only, "only", "", "run only these workloads or parts, e.g. W1,W5 or W2.many (W2: many, big, ignore; W5: running, stopped, new; W6: acquire, rps)")
	flag.DurationVar(&cfg.budget, "budget", 0, "time budget of the whole run (default 14m30s; 110s with -smoke)")
	flag.StringVar(&cfg.kilnBin, "kiln", "", "kiln binary (default: go build ./cmd/kiln into the temp dir)")
	flag.StringVar(&cfg.buildkitd, "buildkitd", "", "buildkitd binary (default bin/buildkitd)")
	flag.StringVar(&cfg.buildctl, "buildctl", "", "buildctl binary (default bin/buildctl)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temp dir: every log, and each build's output under logs/")
	flag.BoolVar(&cfg.disk, "disk", false, "put the daemons' state on disk (the temp dir) instead of a tmpfs")
	var soak soakConfig
	soakOn := flag.Bool("soak", false, "run the soak instead of the benchmark: many builds across many projects, printing kiln's and builders' fds, goroutines, RSS and the data dir's growth (soak.go)")
	flag.IntVar(&soak.builds, "soak-builds", 500, "soak: builds in all")
	flag.IntVar(&soak.projects, "soak-projects", 20, "soak: projects the builds are spread over")
	flag.IntVar(&soak.burst, "soak-burst", 3, "soak: consecutive builds of one project before the next project's turn")
	flag.DurationVar(&soak.idle, "soak-idle", 5*time.Second, "soak: kiln serve's --builder-idle-timeout (builders stop between a project's turns)")
	flag.IntVar(&soak.saveEvery, "soak-save-every", 4, "soak: every n-th build is `kiln build --save` (0: none)")
	render := flag.String("render", "", "measure nothing: rewrite RESULTS.md (in -out, default bench/) from this results.json with the current findings")
	flag.Parse()
	if *render != "" {
		if err := rerender(*render, cfg.outDir); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *soakOn {
		soak.kilnBin, soak.buildkitd, soak.keep = cfg.kilnBin, cfg.buildkitd, cfg.keep
		if soak.builds < 1 || soak.projects < 1 || soak.burst < 1 {
			fmt.Fprintln(os.Stderr, "bench: -soak-builds, -soak-projects and -soak-burst must be at least 1")
			os.Exit(2)
		}
		if err := runSoak(ctx, soak, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "bench: soak:", err)
			os.Exit(1)
		}
		return
	}
	rep, err := Run(ctx, cfg, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if len(rep.Errors) > 0 {
		os.Exit(1)
	}
}

// Run does one benchmark run and writes its report. Progress goes to
// logw, the table to out. It returns an error when nothing could be
// measured; failures of single workloads are in Report.Errors.
func Run(ctx context.Context, cfg config, out, logw io.Writer) (*Report, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	if cfg.runs <= 0 {
		cfg.runs = 10
		if cfg.smoke {
			cfg.runs = 1
		}
	}
	if cfg.budget <= 0 {
		cfg.budget = 14*time.Minute + 30*time.Second
		if cfg.smoke {
			cfg.budget = 110 * time.Second
		}
	}
	if cfg.buildkitd == "" {
		cfg.buildkitd = filepath.Join(root, "bin", "buildkitd")
	}
	if cfg.buildctl == "" {
		cfg.buildctl = filepath.Join(root, "bin", "buildctl")
	}
	// Absolute: commands run with the build context as working directory.
	for _, p := range []*string{&cfg.buildkitd, &cfg.buildctl, &cfg.kilnBin} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return nil, err
			}
		}
	}
	if missing := checkComponents(cfg.buildkitd, cfg.buildctl); len(missing) > 0 {
		return nil, fmt.Errorf("missing components: %s", strings.Join(missing, ", "))
	}
	if cfg.outDir == "" {
		if cfg.smoke {
			if cfg.outDir, err = os.MkdirTemp("", "kiln-bench-smoke-out-"); err != nil {
				return nil, err
			}
		} else {
			cfg.outDir = filepath.Join(root, "bench")
		}
	}
	// Short: builders' unix sockets live under here.
	tmp, err := os.MkdirTemp("", "kb-")
	if err != nil {
		return nil, err
	}
	start := time.Now()
	// Cleanup (stopping kiln serve and its builders, the daemons) keeps a
	// share of the budget for itself.
	parent := ctx
	ctx, cancel := context.WithDeadline(ctx, start.Add(cfg.budget-min(time.Minute, cfg.budget/6)))
	defer cancel()

	busy0, own0 := cpuBusy(), ownCPU()
	r := &runner{cfg: cfg, root: root, tmp: tmp, log: logw, start: start,
		rep: &Report{Mode: "full", Machine: machineInfo(), Started: start.UTC(), LoadBefore: loadAvg()}}
	if cfg.smoke {
		r.sizes = smokeSizes
		r.rep.Mode = "smoke"
	} else {
		r.sizes = fullSizes
	}
	r.rep.Setup.Runs, r.rep.Setup.Sizes = cfg.runs, r.sizes
	r.state = filepath.Join(tmp, "state")
	if err := os.MkdirAll(r.state, 0o700); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, err
	}
	r.rep.Setup.State = "disk (" + r.state + ")"
	if !cfg.disk {
		// Both sides' daemons write to a tmpfs: on this shared machine
		// other work's disk I/O, and ext4's slow inode allocation next to
		// many recently deleted inodes (each "first run" follows a prune
		// of thousands of files; see Findings), would otherwise decide
		// the ratios by where each state directory happens to live.
		size := "6g"
		if cfg.smoke {
			size = "1g"
		}
		if err := unix.Mount("tmpfs", r.state, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
			_ = os.RemoveAll(tmp)
			return nil, fmt.Errorf("mount a tmpfs for the daemons' state (or use -disk): %w", err)
		}
		r.rep.Setup.State = "tmpfs (size=" + size + ")"
	}
	defer func() {
		r.cleanup()
		if cfg.keep {
			hint := ""
			if !cfg.disk {
				hint = " (the daemons' state was on a tmpfs, now gone; -disk keeps it too)"
			}
			r.logf("temp dir kept: %s%s", tmp, hint)
		} else {
			_ = unmountUnder(tmp)
			_ = os.RemoveAll(tmp)
		}
	}()

	if err := r.setup(ctx); err != nil {
		return nil, err
	}
	var todo []workload
	for _, w := range r.workloads() {
		if r.wants(w.id) {
			todo = append(todo, w)
		}
	}
	for k, w := range todo {
		if ctx.Err() != nil {
			r.rep.fail(fmt.Errorf("%s not run: time budget used up", w.id))
			continue
		}
		r.logf("== %s: %s", w.id, w.name)
		// Series start no new run once 80 % of the workload's time is
		// spent (the first run of each always happens); only the run's
		// own deadline (ctx) cuts a run short.
		r.wend = time.Now().Add(r.budgetOf(ctx, todo[k:]) * 4 / 5)
		r.wdeadline = r.wend
		if err := w.run(ctx); err != nil {
			r.rep.fail(fmt.Errorf("%s: %w", w.id, err))
			r.logf("%s failed: %v", w.id, err)
		}
	}
	sortResults(r.rep.Results)
	r.rep.Targets = evaluate(r.rep, r.sizes)
	r.rep.LoadAfter = loadAvg()
	// Stopped first, so that the run's whole process tree is accounted
	// for in ownCPU.
	r.cleanup()
	r.rep.Duration = time.Since(start).Seconds()
	busy, own := cpuBusy()-busy0, ownCPU()-own0
	r.rep.BusyCPU, r.rep.RunCPU = busy.Seconds(), own.Seconds()
	r.rep.OtherCPU = max(busy-own, 0).Seconds()
	r.rep.OtherShare = r.rep.OtherCPU / (r.rep.Duration * float64(r.rep.Machine.Cores))
	// Loaded: others used more than a tenth of the machine meanwhile, or
	// it was busy when the run began.
	r.rep.Loaded = r.rep.OtherShare > 0.1 || r.rep.LoadBefore[0] > 0.5
	printTable(out, r.rep)
	if parent.Err() != nil {
		// Interrupted: the partial numbers are shown, not written over the
		// last complete report.
		return r.rep, fmt.Errorf("interrupted; %s not written", cfg.outDir)
	}
	if err := writeReport(cfg.outDir, r.rep); err != nil {
		return r.rep, err
	}
	r.logf("wrote %s and %s (%.0f s)", filepath.Join(cfg.outDir, "RESULTS.md"), filepath.Join(cfg.outDir, "results.json"), time.Since(start).Seconds())
	return r.rep, nil
}

// workload is one of W1–W5 with its share of the time budget (of a full
// run; scaled to the budget actually given).
type workload struct {
	id, name string
	budget   time.Duration
	run      func(context.Context) error
}

func (r *runner) workloads() []workload {
	// Run order: W2, the longest and the one whose runs vary most with
	// the machine's load, goes last and gets whatever time the others
	// left; the report lists results by workload.
	return []workload{
		{"W1", "small context: warm no-op and one-file-change rebuilds", 60 * time.Second, r.w1},
		{"W5", "builder acquire latency", 80 * time.Second, r.w5},
		{"W3", "N concurrent builds in N projects", 170 * time.Second, r.w3},
		{"W4", "registry: push, pull, re-push, gzip and zstd", 140 * time.Second, r.w4},
		{"W6", "control plane: SQLite vs Postgres, one replica vs two", 100 * time.Second, r.w6},
		{"W2", "large contexts: 10k files, one 500 MB file, .dockerignore", 330 * time.Second, r.w2},
	}
}

// budgetOf is the time the first of todo may take: its share of what is
// left of the run, the shares being the workloads' budgets (about 13 of
// the default 14m30s; setup and cleanup take the rest). Time a workload
// leaves unused goes to the ones after it.
func (r *runner) budgetOf(ctx context.Context, todo []workload) time.Duration {
	deadline, _ := ctx.Deadline()
	left := time.Until(deadline)
	var total time.Duration
	for _, w := range todo {
		total += w.budget
	}
	return time.Duration(float64(left) * float64(todo[0].budget) / float64(total))
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "[%6.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

// more reports whether series may start run i: always the first, then
// while the workload's share of the budget lasts.
func (r *runner) more(ctx context.Context, i int) bool {
	if ctx.Err() != nil {
		return false
	}
	return i == 0 || time.Now().Before(r.wdeadline)
}

// wants reports whether -only selects id: a workload ("W2") is run when it
// or one of its parts ("W2.many") is named; a part when it or its
// workload is.
func (r *runner) wants(id string) bool {
	if r.cfg.only == "" {
		return true
	}
	id = strings.ToUpper(id)
	for _, o := range strings.Split(strings.ToUpper(r.cfg.only), ",") {
		o = strings.TrimSpace(o)
		if o == id || strings.HasPrefix(id, o+".") || strings.HasPrefix(o, id+".") {
			return true
		}
	}
	return false
}

// portion gives the series that follow frac of what is left of the
// workload's time (the rest stays for the series after them).
func (r *runner) portion(frac float64) {
	r.wdeadline = time.Now().Add(time.Duration(frac * float64(time.Until(r.wend))))
}

// truncated notes on p that it has fewer runs than asked.
func (r *runner) truncated(p *pair, done int) {
	if n := r.runsOf(p); done < n {
		p.Truncated = true
		p.Note = strings.TrimSpace(p.Note + fmt.Sprintf(" %d of %d runs (time budget).", done, n))
	}
}

// runsOf is how many timed runs per side p gets: -runs, or p's minimum.
func (r *runner) runsOf(p *pair) int {
	if p.minRuns > r.cfg.runs && !r.cfg.smoke {
		return p.minRuns
	}
	return r.cfg.runs
}

var errBudget = errors.New("time budget used up")
