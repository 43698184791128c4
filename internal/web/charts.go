package web

import (
	"cmp"
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"
)

// The project page's two charts are SVG drawn on the server: a bar per
// build (oldest left), its height the build's duration in one, the share
// of its steps that were cached in the other. No script draws them.

const (
	chartW   = 600 // the viewBox; the SVG scales to its box
	chartH   = 120
	chartGap = 2
)

type bar struct {
	ID      string
	X, W    float64
	Y, H    float64
	Status  string
	Label   string // the bar's <title>: what a pointer or screen reader gets
	Value   int    // the plotted value: milliseconds, or percent (-1: no steps)
	Caption string
}

type chart struct {
	Bars []bar
	Max  string // what the top of the chart stands for
	W, H int
}

type charts struct {
	Duration chart
	CacheHit chart
	// LastHit is the newest build's cache-hit percent (-1: none).
	LastHit int
}

func chartsOf(rows []buildRow) charts {
	c := charts{Duration: chart{W: chartW, H: chartH}, CacheHit: chart{W: chartW, H: chartH, Max: "100 %"}, LastHit: -1}
	if len(rows) == 0 {
		return c
	}
	var longest time.Duration
	for _, r := range rows {
		longest = max(longest, r.Duration)
	}
	longest = max(longest, time.Second)
	c.Duration.Max = human(longest)
	slot := float64(chartW) / float64(max(len(rows), chartBuilds))
	for i, r := range rows {
		x := float64(i) * slot
		h := max(1, float64(chartH)*float64(r.Duration)/float64(longest))
		c.Duration.Bars = append(c.Duration.Bars, bar{ID: r.ID, X: x, W: slot - chartGap, Y: chartH - h, H: h, Status: r.Status,
			Value: int(r.Duration.Milliseconds()), Label: fmt.Sprintf("%s: %s, %s", r.ID, r.Status, human(r.Duration))})
		hit := bar{ID: r.ID, X: x, W: slot - chartGap, Status: r.Status, Value: r.HitPercent}
		if r.HitPercent >= 0 {
			hit.H = max(1, float64(chartH)*float64(r.HitPercent)/100) // 0 % still shows
			hit.Label = fmt.Sprintf("%s: %d of %d steps cached (%d %%)", r.ID, r.Cached, r.Total, r.HitPercent)
		} else {
			hit.Label = r.ID + ": no steps recorded"
		}
		hit.Y = chartH - hit.H
		c.CacheHit.Bars = append(c.CacheHit.Bars, hit)
	}
	c.LastHit = rows[len(rows)-1].HitPercent
	return c
}

// sortSteps orders the waterfall by start; steps that started together
// and steps not started (last) go in the order of their names ("[stage 2/4] …" before "[stage 10/4] …"):
// BuildKit lists a solve's vertices from the last one.
func sortSteps(steps []liveStep) {
	slices.SortStableFunc(steps, func(a, b liveStep) int {
		switch {
		case a.StartedAt == nil && b.StartedAt == nil:
			return naturalCompare(a.Name, b.Name)
		case a.StartedAt == nil:
			return 1
		case b.StartedAt == nil:
			return -1
		}
		if c := a.StartedAt.Compare(*b.StartedAt); c != 0 {
			return c
		}
		return naturalCompare(a.Name, b.Name) // cached steps start together
	})
}

// naturalCompare compares strings with runs of digits compared as numbers.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// human is a duration as people read it: 850ms, 12.3s, 4m05s, 2h10m.
func human(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

var funcs = template.FuncMap{
	"human": human,
	"bytes": bytesHuman,
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"iso": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	},
	"f1":    func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"upper": strings.ToUpper,
	"ms":    func(ms int64) string { return human(time.Duration(ms) * time.Millisecond) },
}
