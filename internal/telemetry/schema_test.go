package telemetry

import (
	"strings"
	"testing"
	"time"
)

func TestPartitionsExpireByWholeMonths(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	const day = 24 * time.Hour
	for _, c := range []struct {
		partition string
		retention time.Duration
		want      bool
	}{
		{"202612", 90 * day, false},
		{"202609", 90 * day, false}, // September ended Oct 1, after the cutoff (Sep 3)
		{"202608", 90 * day, true},  // August ended Sep 1, before it
		{"202001", 90 * day, true},
		{"202611", 1 * day, true},  // November ended Dec 1 00:00, before the cutoff (Dec 1 12:00)
		{"202611", 2 * day, false}, // … but after Nov 30 12:00
		{"tuple()", 90 * day, false},
		{"2026-12", 90 * day, false},
	} {
		if got := expired(c.partition, now, c.retention); got != c.want {
			t.Errorf("expired(%s, retention %s) = %v, want %v", c.partition, c.retention, got, c.want)
		}
	}
}

// The schema uses only what ClickHouse 18.16 has: no TTL, no DateTime64,
// no LowCardinality; every table replaces by version within monthly
// partitions.
func TestSchemaFitsClickHouse18(t *testing.T) {
	for _, tb := range tables {
		ddl := tb.create()
		for _, banned := range []string{"TTL", "DateTime64", "LowCardinality", "Nullable"} {
			if strings.Contains(ddl, banned) {
				t.Errorf("%s uses %s: %s", tb.name, banned, ddl)
			}
		}
		if !strings.Contains(ddl, "ReplacingMergeTree(version) PARTITION BY toYYYYMM(") {
			t.Errorf("%s: %s", tb.name, ddl)
		}
	}
}
