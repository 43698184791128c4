package steps

import (
	"strings"
	"testing"
)

// A build that prints without end stores up to the budget, then one
// notice, then nothing, over any number of batches.
func TestLogBudget(t *testing.T) {
	b := &LogBudget{Max: 100}
	line := LogLine{Digest: "d", Message: strings.Repeat("y", 30)}
	var stored []LogLine
	for range 10 {
		stored = append(stored, b.Take([]LogLine{line, line})...)
	}
	if len(stored) != 4 {
		t.Fatalf("stored %d lines, want 3 of the build's and the notice", len(stored))
	}
	if last := stored[3].Message; !strings.Contains(last, "log truncated") || !strings.Contains(last, "100 B") {
		t.Errorf("last line %q, want the truncation notice", last)
	}
	if got := (&LogBudget{}).Take([]LogLine{line}); len(got) != 1 {
		t.Errorf("zero budget (the default) stored %d lines, want 1", len(got))
	}
}
