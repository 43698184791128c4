package steps

import (
	"fmt"
	"sync"

	"github.com/kiln-dev/kiln/internal/units"
)

// DefaultMaxLogBytes is how many bytes of a build's logs kiln stores when
// nothing else is configured: enough for any honest build's output; a step
// that prints without end (`RUN yes`) stops being stored there, not when
// the disk is full.
const DefaultMaxLogBytes = 16 << 20

// LogBudget caps the log bytes stored for one build, across every batch
// of lines it is given. Past the cap it keeps one line saying the log was
// truncated and drops the rest. It is what every recorder of build logs
// (the gateway's follower, the source-build runner) stores through. The
// zero value uses DefaultMaxLogBytes.
type LogBudget struct {
	Max int

	mu        sync.Mutex
	used      int
	truncated bool
}

// Take returns the part of lines the budget still has room for, with the
// truncation notice when it runs out.
func (b *LogBudget) Take(lines []LogLine) []LogLine {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := b.Max
	if limit <= 0 {
		limit = DefaultMaxLogBytes
	}
	out := make([]LogLine, 0, len(lines))
	for _, l := range lines {
		if b.truncated {
			break
		}
		if b.used+len(l.Message) > limit {
			b.truncated = true
			l.Message = fmt.Sprintf("[kiln] log truncated: this build's logs passed %s; later lines are not stored\n", units.Bytes(int64(limit)))
			out = append(out, l)
			break
		}
		b.used += len(l.Message)
		out = append(out, l)
	}
	return out
}
