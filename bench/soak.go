package main

// The soak: many builds across many projects against one `kiln serve`,
// with builders idling out and starting again between a project's turns,
// watching what should stay flat (kiln serve's fds, goroutines and RSS, the
// builders' fds and RSS) and what should grow only by what a build leaves
// (the data directory). It is not part of CI: `make soak` runs the long
// one (500 builds, 20 projects); `go run ./bench -soak -soak-builds 60`
// is a quick check that it works.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// soakConfig is what -soak and its flags chose.
type soakConfig struct {
	builds    int           // builds in all
	projects  int           // projects they are spread over
	burst     int           // consecutive builds of one project before the next project's turn
	idle      time.Duration // kiln serve's --builder-idle-timeout: builders stop between turns
	saveEvery int           // every n-th build is `kiln build --save` (a push into kiln's registry); 0: none
	kilnBin   string
	buildkitd string
	keep      bool
}

// soakSample is one look at the processes and the data directory.
type soakSample struct {
	label       string
	builds      int   // builds done when it was taken
	kilnFDs     int   // kiln serve's open fds
	kilnRSS     int64 // bytes
	goroutines  int   // kiln serve's, from its admin listener; -1: not measured
	builders    int   // buildkitd processes running
	builderFDs  int   // their fds, summed
	builderRSS  int64 // their RSS, summed
	maxBuilder  int64 // the largest builder's RSS
	dataBytes   int64 // the data directory, builders' state included
	dbBytes     int64 // kiln.db and its -wal and -shm
	buildersDir int64 // builders/ (their BuildKit state, caches included)
}

// runSoak runs the soak and prints its report on out (progress on logw).
// It fails if a build failed or kiln serve died; the numbers are for a
// human (or the closing note) to judge.
func runSoak(ctx context.Context, cfg soakConfig, out, logw io.Writer) error {
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "soak: "+format+"\n", args...)
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	if cfg.buildkitd == "" {
		cfg.buildkitd = filepath.Join(root, "bin", "buildkitd")
	}
	if missing := checkComponents(cfg.buildkitd, filepath.Join(filepath.Dir(cfg.buildkitd), "buildctl")); len(missing) > 0 {
		return fmt.Errorf("missing components: %s", strings.Join(missing, ", "))
	}
	tmp, err := os.MkdirTemp("", "ks-") // short: builders' unix sockets live under it
	if err != nil {
		return err
	}
	if cfg.kilnBin == "" {
		logf("building kiln from the tree")
		if cfg.kilnBin, err = buildKiln(ctx, root, tmp); err != nil {
			return err
		}
	}
	if cfg.kilnBin, err = filepath.Abs(cfg.kilnBin); err != nil {
		return err
	}
	data := filepath.Join(tmp, "data")
	args := []string{"--builder-idle-timeout", cfg.idle.String()}
	admin := ""
	if soakHasFlag(cfg.kilnBin, "--admin-addr") {
		port, err := freePort()
		if err != nil {
			return err
		}
		admin = "127.0.0.1:" + strconv.Itoa(port)
		args = append(args, "--admin-addr", admin)
	} else {
		logf("this kiln has no --admin-addr: goroutines are not measured")
	}
	s, err := startKiln(ctx, cfg.kilnBin, cfg.buildkitd, data, args...)
	if err != nil {
		return err
	}
	defer func() {
		s.stop()
		if cfg.keep {
			logf("kept %s", tmp)
			return
		}
		_ = unmountUnder(tmp)
		_ = os.RemoveAll(tmp)
	}()

	projects := make([]string, cfg.projects)
	for i := range projects {
		if projects[i], err = s.createProject(ctx, fmt.Sprintf("soak-%02d", i)); err != nil {
			return err
		}
	}
	// One context for every build; the NONCE build arg decides whether its
	// RUN runs again (a new value) or is a cache hit (one seen before).
	ctxDir := filepath.Join(tmp, "context")
	if err := newContext(ctxDir, baseStages+"\nFROM busybox\nARG NONCE\nRUN echo $NONCE > /nonce && head -c 65536 /dev/urandom > /payload\n"); err != nil {
		return err
	}

	sample := func(label string, builds int) soakSample {
		sm := soakSample{label: label, builds: builds, goroutines: -1}
		if s.proc != nil {
			pid := s.proc.pid()
			sm.kilnFDs = procFDs(pid)
			sm.kilnRSS, _ = procRSS(pid)
		}
		if admin != "" {
			sm.goroutines = soakGoroutines(ctx, admin)
		}
		if bs, err := s.builders(ctx); err == nil {
			for _, b := range bs {
				if b.PID == 0 {
					continue
				}
				sm.builders++
				sm.builderFDs += procFDs(b.PID)
				rss, _ := procRSS(b.PID)
				sm.builderRSS += rss
				sm.maxBuilder = max(sm.maxBuilder, rss)
			}
		}
		sm.dataBytes = duBytes(data)
		for _, f := range []string{"kiln.db", "kiln.db-wal", "kiln.db-shm"} {
			if fi, err := os.Stat(filepath.Join(data, f)); err == nil {
				sm.dbBytes += fi.Size()
			}
		}
		sm.buildersDir = duBytes(filepath.Join(data, "builders"))
		return sm
	}

	samples := []soakSample{sample("start", 0)}
	start := time.Now()
	var failed []string
	mid := cfg.builds / 2
	for i := range cfg.builds {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !s.proc.alive() {
			return fmt.Errorf("kiln serve died after %d builds:\n%s", i, tailFile(filepath.Join(data, "serve.log"), 30))
		}
		proj := projects[(i/cfg.burst)%len(projects)]
		args := []string{"build", "--project", proj, "--progress", "plain", "--build-arg", "NONCE=" + strconv.Itoa(i%7)}
		if cfg.saveEvery > 0 && i%cfg.saveEvery == cfg.saveEvery-1 {
			args = append(args, "--save")
		}
		args = append(args, ".")
		r, err := s.cli(ctx, 5*time.Minute, ctxDir, args...)
		if err != nil {
			failed = append(failed, fmt.Sprintf("build %d (%s): %v\n%s", i+1, proj, err, tailLines(r.Output, 15)))
			logf("build %d of %d failed: %v", i+1, cfg.builds, err)
		}
		if i+1 == mid {
			samples = append(samples, sample("half", i+1))
		}
		if (i+1)%25 == 0 || i+1 == cfg.builds {
			sm := sample("", i+1)
			logf("%d/%d builds in %s, %d failed; kiln: %d fds, %s RSS; %d builders running",
				i+1, cfg.builds, time.Since(start).Round(time.Second), len(failed), sm.kilnFDs, soakMiB(sm.kilnRSS), sm.builders)
		}
	}
	took := time.Since(start)
	samples = append(samples, sample("end", cfg.builds))
	// Settled: every builder has idled out (they stop after cfg.idle; the
	// reaper looks a few times per timeout).
	settle := time.Now().Add(cfg.idle*3 + 30*time.Second)
	for time.Now().Before(settle) {
		if bs, err := s.builders(ctx); err == nil && soakRunning(bs) == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	samples = append(samples, sample("settled", cfg.builds))

	printSoak(out, cfg, took, samples, mid, failed)
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d builds failed", len(failed), cfg.builds)
	}
	return nil
}

func soakRunning(bs []builderStatus) int {
	n := 0
	for _, b := range bs {
		if b.PID != 0 {
			n++
		}
	}
	return n
}

// printSoak writes the soak's table: each sample, and the growth per
// build over the second half (after every project's builder and cache
// exist, so one-time costs do not count).
func printSoak(w io.Writer, cfg soakConfig, took time.Duration, samples []soakSample, mid int, failed []string) {
	fmt.Fprintf(w, "\nkiln soak: %d builds over %d projects (%d at a time each), builder idle timeout %s, --save every %d; %s (%.1f s/build)\n\n",
		cfg.builds, cfg.projects, cfg.burst, cfg.idle, cfg.saveEvery, took.Round(time.Second), took.Seconds()/float64(max(cfg.builds, 1)))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sample\tbuilds\tkiln fds\tkiln goroutines\tkiln RSS\tbuilders\tbuilder fds\tbuilder RSS (sum)\tbuilder RSS (max)\tdata dir\tdatabase\tbuilders' state\t")
	for _, s := range samples {
		g := "n/a"
		if s.goroutines >= 0 {
			g = strconv.Itoa(s.goroutines)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n", s.label, s.builds, s.kilnFDs, g, soakMiB(s.kilnRSS),
			s.builders, s.builderFDs, soakMiB(s.builderRSS), soakMiB(s.maxBuilder), soakMiB(s.dataBytes), soakMiB(s.dbBytes), soakMiB(s.buildersDir))
	}
	tw.Flush()
	var half, end, settled soakSample
	for _, s := range samples {
		switch s.label {
		case "half":
			half = s
		case "end":
			end = s
		case "settled":
			settled = s
		}
	}
	if n := end.builds - half.builds; half.label != "" && n > 0 {
		per := func(a, b int64) string { return fmt.Sprintf("%+.1f KiB", float64(b-a)/float64(n)/1024) }
		fmt.Fprintf(w, "\nover the second half (%d builds): per build, data dir %s, database %s, builders' state %s; in all, kiln fds %+d, RSS %s, goroutines %s\n",
			n, per(half.dataBytes, end.dataBytes), per(half.dbBytes, end.dbBytes), per(half.buildersDir, end.buildersDir),
			end.kilnFDs-half.kilnFDs, signedMiB(end.kilnRSS-half.kilnRSS), diffOrNA(half.goroutines, end.goroutines))
	}
	if s := samples[0]; settled.label != "" {
		fmt.Fprintf(w, "settled vs start (builders stopped): kiln fds %+d, goroutines %s, RSS %s\n",
			settled.kilnFDs-s.kilnFDs, diffOrNA(s.goroutines, settled.goroutines), signedMiB(settled.kilnRSS-s.kilnRSS))
	}
	fmt.Fprintf(w, "failed builds: %d\n", len(failed))
	for i, f := range failed {
		if i == 5 {
			fmt.Fprintf(w, "… and %d more\n", len(failed)-5)
			break
		}
		fmt.Fprintln(w, f)
	}
}

func diffOrNA(a, b int) string {
	if a < 0 || b < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%+d", b-a)
}

func soakMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func signedMiB(b int64) string { return fmt.Sprintf("%+.1f MiB", float64(b)/(1<<20)) }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// soakHasFlag reports whether `kiln serve --help` lists flag.
func soakHasFlag(kiln, flag string) bool {
	out, _ := exec.Command(kiln, "serve", "--help").CombinedOutput()
	return strings.Contains(string(out), flag+" ")
}

// soakGoroutines reads kiln serve's goroutine count from its admin
// listener's pprof; -1 if it cannot.
func soakGoroutines(ctx context.Context, admin string) int {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+admin+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return -1
	}
	res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return -1
	}
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return -1
	}
	// "goroutine profile: total 123"
	n, err := strconv.Atoi(strings.TrimSpace(line[strings.LastIndexByte(line, ' ')+1:]))
	if err != nil {
		return -1
	}
	return n
}

// procFDs counts process pid's open fds.
func procFDs(pid int) int {
	es, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return len(es)
}

// duBytes is the disk space the files under dir take (allocated blocks,
// as du -x counts them: hard links once, mounts under dir not entered).
func duBytes(dir string) int64 {
	var root syscall.Stat_t
	if err := syscall.Stat(dir, &root); err != nil {
		return 0
	}
	var n int64
	seen := map[uint64]bool{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return nil
		}
		if st.Dev != root.Dev {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		n += st.Blocks * 512
		return nil
	})
	return n
}
