package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	bkclient "github.com/moby/buildkit/client"
	"golang.org/x/sys/unix"
)

// series runs fn for runs i = 0, 1, … on both sides (alternating which goes
// first) until cfg.runs or the workload's budget, and records p.
func (r *runner) series(ctx context.Context, p *pair, fn func(i int, s side) (float64, error)) error {
	i := 0
	defer func() {
		r.truncated(p, i)
		r.record(p)
	}()
	for n := r.runsOf(p); i < n && r.more(ctx, i); i++ {
		for _, s := range order(i) {
			v, err := fn(i, s)
			if err != nil {
				return fmt.Errorf("%s (%s, run %d): %w", p.Name, s, i+1, err)
			}
			p.add(s, v)
		}
	}
	return nil
}

func (p *pair) add(s side, v float64) {
	if s == sideBase {
		p.base = append(p.base, v)
	} else {
		p.kiln = append(p.kiln, v)
	}
}

func newPair(id, name, unit string) *pair {
	return &pair{Result: Result{ID: id, Workload: id[:2], Name: name, Unit: unit}}
}

// W1: a small context (20 files): a warm no-op rebuild, and a rebuild after
// one file changed (the COPY and the RUN after it run again).
func (r *runner) w1(ctx context.Context) error {
	dir := filepath.Join(r.tmp, "ctx", "w1")
	if err := smallContext(dir, r.sizes.SmallFiles, "cat /src/* | wc -c > /size"); err != nil {
		return err
	}
	spec := buildSpec{Context: dir}
	for _, s := range []side{sideBase, sideKiln} { // warm: the steps are cached from here on
		if _, err := r.build(ctx, s, r.project, spec); err != nil {
			return err
		}
	}
	noop := newPair("W1.noop", "W1 warm no-op rebuild", "s")
	noop.Note = fmt.Sprintf("%d-file context; busybox base, COPY src, RUN; every step cached.", r.sizes.SmallFiles)
	err := r.series(ctx, noop, func(i int, s side) (float64, error) {
		d, err := r.build(ctx, s, r.project, spec)
		return d.Seconds(), err
	})
	if err != nil {
		return err
	}
	change := newPair("W1.change", "W1 one-file-change rebuild", "s")
	change.Note = "One file of src/ rewritten before each build: the COPY and the RUN after it run again."
	return r.series(ctx, change, func(i int, s side) (float64, error) {
		if err := touchFile(filepath.Join(dir, "src", "f00.txt")); err != nil {
			return 0, err
		}
		d, err := r.build(ctx, s, r.project, spec)
		return d.Seconds(), err
	})
}

// pruneContexts empties a side's build-context cache (kiln: the project's
// builder, reached through the API like any client).
func (r *runner) pruneContexts(ctx context.Context, s side, project string) error {
	if s == sideBase {
		c, err := r.base.client(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		return pruneContexts(ctx, c)
	}
	return r.kiln.withBuilder(ctx, project, func(c *bkclient.Client) error { return pruneContexts(ctx, c) })
}

// pruneAll empties a side's whole build cache.
func (r *runner) pruneAll(ctx context.Context, s side) error {
	prune := func(c *bkclient.Client) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		return c.Prune(ctx, nil, bkclient.PruneAll)
	}
	if s == sideBase {
		c, err := r.base.client(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		return prune(c)
	}
	return r.kiln.withBuilder(ctx, r.project, prune)
}

// measuredBuild runs one build and returns its wall time and the bytes the
// side's buildkitd read meanwhile (the context it received, mostly).
func (r *runner) measuredBuild(ctx context.Context, s side, project string, spec buildSpec) (time.Duration, int64, error) {
	// Dirty pages of the previous build (or of a prune's deletions) are
	// written back now, not during the timed build.
	unix.Sync()
	pid, err := r.builderPID(ctx, s, project)
	if err != nil {
		return 0, 0, err
	}
	before, err := procReadBytes(pid)
	if err != nil {
		return 0, 0, err
	}
	d, err := r.build(ctx, s, project, spec)
	if err != nil {
		return 0, 0, err
	}
	after, err := procReadBytes(pid)
	if err != nil {
		return 0, 0, err
	}
	return d, after - before, nil
}

const mib = 1 << 20

// W2: large contexts. For each of 10k small files and one big file: a first
// run (the side's context cache pruned first), an unchanged re-run, and a
// run after one (small) file changed; and a first run of a context whose
// .dockerignore excludes 90 % of the files.
func (r *runner) w2(ctx context.Context) error {
	r.logf("  generating contexts")
	many := filepath.Join(r.tmp, "ctx", "w2many")
	big := filepath.Join(r.tmp, "ctx", "w2big")
	ign := filepath.Join(r.tmp, "ctx", "w2ignore")
	for _, c := range []struct {
		part string
		make func() error
	}{
		{"W2.many", func() error { return manyFilesContext(many, r.sizes.ManyFiles, r.sizes.ManyFileBytes, 0) }},
		{"W2.big", func() error { return bigFileContext(big, r.sizes.BigBytes) }},
		{"W2.ignore", func() error { return manyFilesContext(ign, r.sizes.ManyFiles, r.sizes.ManyFileBytes, 90) }},
	} {
		if r.wants(c.part) {
			if err := c.make(); err != nil {
				return err
			}
		}
	}
	manyLabel := fmt.Sprintf("%d × %d KiB files", r.sizes.ManyFiles, r.sizes.ManyFileBytes>>10)
	bigLabel := fmt.Sprintf("one %d MB file", r.sizes.BigBytes>>20)
	r.logf("  contexts ready")
	r.portion(0.45)
	if r.wants("W2.many") {
		if err := r.w2Context(ctx, "many", manyLabel, many, filepath.Join(many, "data", "keep", "d000", "f00000")); err != nil {
			return err
		}
	}
	r.portion(0.75)
	if r.wants("W2.big") {
		if err := r.w2Context(ctx, "big", bigLabel, big, filepath.Join(big, "small", "f0.txt")); err != nil {
			return err
		}
	}
	r.portion(1)
	if !r.wants("W2.ignore") {
		return nil
	}
	size, files, err := dirBytes(ign, ignoredByDockerignore)
	if err != nil {
		return err
	}
	first := newPair("W2.ignore.first", "W2 .dockerignore excludes 90%: first run", "s")
	first.Note = fmt.Sprintf("%d of %d files (%.1f MiB) sent.", files, r.sizes.ManyFiles+3, float64(size)/mib)
	read := newPair("W2.ignore.read", "W2 .dockerignore 90%: buildkitd bytes read", "MiB")
	for _, s := range []side{sideBase, sideKiln} { // warm-up, as in w2Context
		if _, err := r.build(ctx, s, r.project, buildSpec{Context: ign}); err != nil {
			return fmt.Errorf("warm-up (%s): %w", s, err)
		}
	}
	err = r.series(ctx, first, func(i int, s side) (float64, error) {
		if err := r.pruneContexts(ctx, s, r.project); err != nil {
			return 0, err
		}
		d, n, err := r.measuredBuild(ctx, s, r.project, buildSpec{Context: ign})
		if err != nil {
			return 0, err
		}
		read.add(s, float64(n)/mib)
		return d.Seconds(), nil
	})
	r.record(read)
	return err
}

// w2Context measures first / unchanged / one-changed runs of one context.
func (r *runner) w2Context(ctx context.Context, key, label, dir, changeFile string) error {
	size, files, err := dirBytes(dir, nil)
	if err != nil {
		return err
	}
	// Each side gets its own copy: a file one side changes must not be a
	// change the other side's next "first run" has never seen (its COPY
	// would run again, which is not what the series measures).
	specs := map[side]buildSpec{}
	for _, s := range []side{sideBase, sideKiln} {
		d := dir + "-" + s.String()
		if err := linkTree(dir, d); err != nil {
			return err
		}
		specs[s] = buildSpec{Context: d}
	}
	rel, err := filepath.Rel(dir, changeFile)
	if err != nil {
		return err
	}
	prefix := "W2." + key + "."
	first := newPair(prefix+"first", "W2 "+label+": first run", "s")
	first.Note = fmt.Sprintf("context: %d files, %.1f MiB.", files, float64(size)/mib)
	same := newPair(prefix+"unchanged", "W2 "+label+": unchanged re-run", "s")
	changed := newPair(prefix+"changed", "W2 "+label+": one file changed", "s")
	firstRead := newPair(prefix+"first.read", "W2 "+label+": first run, buildkitd bytes read", "MiB")
	sameRead := newPair(prefix+"unchanged.read", "W2 "+label+": unchanged, buildkitd bytes read", "MiB")
	changedRead := newPair(prefix+"changed.read", "W2 "+label+": changed, buildkitd bytes read", "MiB")
	// Warm-up: each side runs the build steps once, so that every timed
	// first run measures sending the context, not copying it into a layer
	// the first time.
	for _, s := range []side{sideBase, sideKiln} {
		if _, err := r.build(ctx, s, r.project, specs[s]); err != nil {
			return fmt.Errorf("warm-up (%s): %w", s, err)
		}
	}
	i := 0
	defer func() {
		for _, p := range []*pair{first, same, changed, firstRead, sameRead, changedRead} {
			r.truncated(p, i)
			r.record(p)
		}
	}()
	for ; i < r.cfg.runs && r.more(ctx, i); i++ {
		for _, s := range order(i) {
			if err := r.pruneContexts(ctx, s, r.project); err != nil {
				return fmt.Errorf("prune (%s): %w", s, err)
			}
			steps := []struct {
				time, read *pair
				before     func() error
			}{
				{first, firstRead, nil},
				{same, sameRead, nil},
				{changed, changedRead, func() error { return touchFile(filepath.Join(specs[s].Context, rel)) }},
			}
			for _, st := range steps {
				if st.before != nil {
					if err := st.before(); err != nil {
						return err
					}
				}
				d, n, err := r.measuredBuild(ctx, s, r.project, specs[s])
				if err != nil {
					return fmt.Errorf("%s (%s, run %d): %w", st.time.Name, s, i+1, err)
				}
				st.time.add(s, d.Seconds())
				st.read.add(s, float64(n)/mib)
			}
		}
	}
	return nil
}

// W3: N builds at once in N projects (kiln: N builders; baseline: the N
// builds on the one shared daemon), N in sizes.Concurrency. Each build
// copies its own small context and runs a short CPU-bound step that a
// fresh NONCE makes run every time.
func (r *runner) w3(ctx context.Context) error {
	maxN := slices.Max(r.sizes.Concurrency)
	run := `echo "$NONCE" > /nonce && dd if=/dev/zero bs=1M count=48 2>/dev/null | sha256sum > /sum`
	dirs := make([]string, maxN)
	projects := make([]string, maxN)
	for i := range maxN {
		dirs[i] = filepath.Join(r.tmp, "ctx", "w3", strconv.Itoa(i))
		if err := smallContext(dirs[i], r.sizes.SmallFiles, run); err != nil {
			return err
		}
		p, err := r.kiln.createProject(ctx, fmt.Sprintf("bench-w3-%d", i))
		if err != nil {
			return err
		}
		projects[i] = p
	}
	// Warm: every kiln builder started and cached up to the RUN; the
	// baseline has each context cached too.
	r.logf("  starting %d kiln builders", maxN)
	if err := r.concurrently(ctx, maxN, func(j int) error {
		_, err := r.kiln.build(ctx, r.buildTimeout(), projects[j], buildSpec{Context: dirs[j], BuildArgs: map[string]string{"NONCE": "warm"}})
		return err
	}); err != nil {
		return err
	}
	for j := range maxN {
		if _, err := r.base.build(ctx, r.buildTimeout(), buildSpec{Context: dirs[j], BuildArgs: map[string]string{"NONCE": "warm"}}); err != nil {
			return err
		}
	}
	for _, n := range r.sizes.Concurrency {
		wall := newPair(fmt.Sprintf("W3.n%d.wall", n), fmt.Sprintf("W3 N=%d: wall time of all builds", n), "s")
		wall.Note = "Each build: its own 20-file context, COPY, then a RUN hashing 48 MiB (fresh NONCE, so it always runs). kiln: N projects, N builders; baseline: one shared buildkitd."
		per := newPair(fmt.Sprintf("W3.n%d.build", n), fmt.Sprintf("W3 N=%d: per-build time", n), "s")
		fair := newPair(fmt.Sprintf("W3.n%d.fairness", n), fmt.Sprintf("W3 N=%d: fairness, slowest/fastest build", n), "x")
		mem := newPair(fmt.Sprintf("W3.n%d.rss", n), fmt.Sprintf("W3 N=%d: builder memory, peak RSS sum", n), "MiB")
		mem.Note = "VmRSS of the buildkitd processes serving the builds (kiln: N, baseline: 1), sampled every 50 ms; RUN containers not included."
		err := r.series(ctx, wall, func(i int, s side) (float64, error) {
			var pids []int
			for j := range n {
				pid, err := r.builderPID(ctx, s, projects[j])
				if err != nil {
					return 0, err
				}
				if !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			sampler := sampleRSS(pids)
			times := make([]float64, n)
			start := time.Now()
			err := r.concurrently(ctx, n, func(j int) error {
				spec := buildSpec{Context: dirs[j], BuildArgs: map[string]string{"NONCE": fmt.Sprintf("%d-%d-%d-%d", n, i, j, time.Now().UnixNano())}}
				d, err := r.build(ctx, s, projects[j], spec)
				times[j] = d.Seconds()
				return err
			})
			took := time.Since(start)
			peak := sampler()
			if err != nil {
				return 0, err
			}
			for _, t := range times {
				per.add(s, t)
			}
			fair.add(s, slices.Max(times)/slices.Min(times))
			mem.add(s, float64(peak)/mib)
			return took.Seconds(), nil
		})
		for _, p := range []*pair{per, fair, mem} {
			p.Truncated = wall.Truncated
			r.record(p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// concurrently runs fn(0…n-1) at once and returns the first error.
func (r *runner) concurrently(ctx context.Context, n int, fn func(int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for j := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[j] = fn(j)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// sampleRSS samples the summed RSS of pids every 50 ms until the returned
// function is called, which returns the peak.
func sampleRSS(pids []int) func() int64 {
	stop := make(chan struct{})
	done := make(chan int64)
	go func() {
		var peak int64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			var sum int64
			for _, pid := range pids {
				if n, err := procRSS(pid); err == nil {
					sum += n
				}
			}
			peak = max(peak, sum)
			select {
			case <-stop:
				done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		close(stop)
		return <-done
	}
}
