package main

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// Result is one measured row: the same work done by the baseline (plain
// buildctl → buildkitd, or distribution used directly) and by kiln.
type Result struct {
	ID       string `json:"id"`       // stable key, e.g. "W1.noop"
	Workload string `json:"workload"` // "W1" … "W5"
	Name     string `json:"name"`
	Unit     string `json:"unit"` // "s", "ms", "MiB", "MB/s", "x"
	// HigherIsBetter marks throughputs (MB/s): the ratio still reads
	// kiln/baseline, but above 1 is good.
	HigherIsBetter bool  `json:"higher_is_better,omitempty"`
	Baseline       *Stat `json:"baseline,omitempty"`
	Kiln           *Stat `json:"kiln,omitempty"`
	// RatioMedian and RatioP90 are kiln/baseline; 0 when a side is missing.
	RatioMedian float64 `json:"ratio_median,omitempty"`
	RatioP90    float64 `json:"ratio_p90,omitempty"`
	// Pending says why kiln's side was not measured (e.g. its registry is
	// not there yet).
	Pending string `json:"pending,omitempty"`
	// Truncated says the time budget ended the series early.
	Truncated bool   `json:"truncated,omitempty"`
	Note      string `json:"note,omitempty"`
}

// pair collects the samples of one Result while it is measured.
type pair struct {
	Result
	base, kiln []float64
	// minRuns raises the runs of a short, noisy series (a builder start)
	// above -runs, except with -smoke: its p90 needs more samples.
	minRuns int
}

func (p *pair) finish() *Result {
	r := p.Result
	r.Baseline, r.Kiln = summarize(p.base), summarize(p.kiln)
	if r.Baseline != nil && r.Kiln != nil {
		r.RatioMedian = ratio(r.Kiln.Median, r.Baseline.Median)
		r.RatioP90 = ratio(r.Kiln.P90, r.Baseline.P90)
	}
	return &r
}

// Report is everything one run produced; it is written as results.json.
type Report struct {
	Mode       string     `json:"mode"` // "full" or "smoke"
	Machine    Machine    `json:"machine"`
	Started    time.Time  `json:"started"`
	Duration   float64    `json:"duration_s"`
	LoadBefore [3]float64 `json:"load_before"`
	LoadAfter  [3]float64 `json:"load_after"`
	// OtherCPU is the CPU time other processes used while the run went
	// on (the machine's busy time minus the run's own process tree), and
	// OtherShare that as a share of the machine's capacity.
	BusyCPU    float64       `json:"machine_busy_cpu_s"` // all processes, /proc/stat
	RunCPU     float64       `json:"run_cpu_s"`          // this run's process tree, getrusage
	OtherCPU   float64       `json:"other_cpu_s"`
	OtherShare float64       `json:"other_cpu_share"`
	Loaded     bool          `json:"loaded_machine"`
	Setup      SetupInfo     `json:"setup"`
	Results    []*Result     `json:"results"`
	Targets    []TargetCheck `json:"targets"`
	Errors     []string      `json:"errors,omitempty"`

	mu sync.Mutex
}

// SetupInfo records how the two sides were configured.
type SetupInfo struct {
	BuildkitdVersion string   `json:"buildkitd_version"`
	BuildkitdArgs    []string `json:"buildkitd_args"` // the baseline's, paths included
	KilnBuilderArgs  []string `json:"kiln_builder_args"`
	ConfigIdentical  bool     `json:"buildkitd_config_identical"`
	ConfigNote       string   `json:"config_note,omitempty"`
	Runs             int      `json:"runs"`
	Sizes            Sizes    `json:"sizes"`
	Transport        string   `json:"transport"`
	State            string   `json:"state"` // where the daemons' state lives: tmpfs or disk
}

// sortResults orders results by workload (W1 … W5), keeping the order in
// which each workload recorded them.
func sortResults(rs []*Result) {
	slices.SortStableFunc(rs, func(a, b *Result) int { return strings.Compare(a.Workload, b.Workload) })
}

func (r *Report) add(res *Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Results = append(r.Results, res)
}

func (r *Report) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Errors = append(r.Errors, err.Error())
}

func (r *Report) result(id string) *Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, res := range r.Results {
		if res.ID == id {
			return res
		}
	}
	return nil
}
