package cli

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/kiln-dev/kiln/internal/units"
)

// uploadProgress shows how far an upload of a known size has got, on
// stderr. On a terminal it is one bar redrawn in place at most
// barRedrawEvery; elsewhere (CI logs) it is a line at the start, at every
// quarter and at the end. Quiet prints nothing.
//
// The reader it wraps is read by net/http's transport goroutine while the
// caller waits in Do; mu guards the counters between them.
type uploadProgress struct {
	w     io.Writer
	what  string // "context": the thing uploaded, as the lines name it
	total int64
	style progressStyle
	now   func() time.Time // time.Now; tests set a fake clock

	mu       sync.Mutex
	n        int64
	start    time.Time
	lastDraw time.Time
	lastLen  int // length of the bar last drawn, to blank a shorter one
	quarter  int // quarters already reported (plain style)
	finished bool
}

type progressStyle int

const (
	progressQuiet progressStyle = iota
	progressLines
	progressBar
)

const (
	barRedrawEvery = 100 * time.Millisecond
	barWidth       = 30
)

// uploadProgressStyle maps --progress to a style: tty forces the bar,
// plain the lines, auto picks by whether w is a terminal; quiet and
// rawjson (whose stderr is for JSON) print nothing.
func uploadProgressStyle(mode string, w io.Writer) progressStyle {
	switch mode {
	case "quiet", "rawjson":
		return progressQuiet
	case "tty":
		return progressBar
	case "plain":
		return progressLines
	}
	if writerIsTerminal(w) {
		return progressBar
	}
	return progressLines
}

func writerIsTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

func newUploadProgress(w io.Writer, style progressStyle, what string, total int64) *uploadProgress {
	return &uploadProgress{w: w, what: what, total: total, style: style, now: time.Now}
}

// Reader returns r counting what is read from it. Each call starts the
// count over (a retried upload reads the file again).
func (p *uploadProgress) Reader(r io.Reader) io.Reader {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n, p.quarter, p.finished = 0, 0, false
	p.start = p.now()
	switch p.style {
	case progressLines:
		fmt.Fprintf(p.w, "uploading %s: %s\n", p.what, units.Bytes(p.total))
	case progressBar:
		p.draw()
	}
	return &countingReader{r: r, add: p.add}
}

func (p *uploadProgress) add(n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.n += int64(n)
	switch p.style {
	case progressLines:
		if p.total <= 0 {
			return
		}
		for q := p.quarter + 1; q <= 3 && p.n*4 >= p.total*int64(q); q++ {
			p.quarter = q
			fmt.Fprintf(p.w, "uploading %s: %d%% (%s / %s)\n", p.what, q*25, units.Bytes(p.n), units.Bytes(p.total))
		}
	case progressBar:
		if p.now().Sub(p.lastDraw) >= barRedrawEvery {
			p.draw()
		}
	}
}

// Done ends the display after a successful upload: the full bar and a
// newline, or the closing line.
func (p *uploadProgress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.finished = true
	switch p.style {
	case progressLines:
		elapsed := p.now().Sub(p.start)
		fmt.Fprintf(p.w, "uploaded %s: %s in %s (%s)\n", p.what, units.Bytes(p.n), elapsed.Round(100*time.Millisecond), formatRate(p.n, elapsed))
	case progressBar:
		p.draw()
		fmt.Fprintln(p.w)
	}
}

// Abort ends the display after a failed attempt, so what follows starts
// on a line of its own.
func (p *uploadProgress) Abort() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.finished = true
	if p.style == progressBar {
		fmt.Fprintln(p.w)
	}
}

// draw redraws the bar; mu is held.
func (p *uploadProgress) draw() {
	now := p.now()
	p.lastDraw = now
	filled := 0
	if p.total > 0 {
		filled = int(min(p.n, p.total) * barWidth / p.total)
	}
	bar := strings.Repeat("=", filled)
	if filled < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-filled-1)
	}
	line := fmt.Sprintf("uploading %s  [%s]  %s / %s  %s", p.what, bar, units.Bytes(p.n), units.Bytes(p.total), formatRate(p.n, now.Sub(p.start)))
	pad := ""
	if len(line) < p.lastLen {
		pad = strings.Repeat(" ", p.lastLen-len(line))
	}
	p.lastLen = len(line)
	fmt.Fprint(p.w, "\r"+line+pad)
}

// countingReader tells add how many bytes each Read returned.
type countingReader struct {
	r   io.Reader
	add func(int)
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.add(n)
	return n, err
}

// formatRate is n bytes over d as "3.1 MiB/s"; "-" before any time passed.
func formatRate(n int64, d time.Duration) string {
	if d <= 0 {
		return "- B/s"
	}
	return units.Bytes(int64(float64(n)/d.Seconds())) + "/s"
}
