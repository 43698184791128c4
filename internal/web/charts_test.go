package web

import (
	"testing"
	"time"
)

func TestSortSteps(t *testing.T) {
	at := time.Unix(100, 0)
	later := at.Add(time.Second)
	steps := []liveStep{
		{Name: "[stage-1 10/10] RUN z"},
		{Name: "[stage-1 2/10] RUN b"},
		{Name: "[stage-1 4/10] RUN d", StartedAt: &at},
		{Name: "[stage-1 3/10] RUN c", StartedAt: &at},
		{Name: "[stage-1 1/10] RUN a", StartedAt: &later},
	}
	sortSteps(steps)
	var got []string
	for _, s := range steps {
		got = append(got, s.Name[len(s.Name)-1:])
	}
	want := []string{"c", "d", "a", "b", "z"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order %q, want %q", got, want)
		}
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", 850 * time.Millisecond: "850ms", 12300 * time.Millisecond: "12.3s",
		245 * time.Second: "4m05s", 130 * time.Minute: "2h10m"} {
		if got := human(d); got != want {
			t.Errorf("human(%v) = %q, want %q", d, got, want)
		}
	}
}
