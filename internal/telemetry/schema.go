package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The tables kiln exports to.
const (
	TableBuilds   = "kiln_builds"
	TableSteps    = "kiln_steps"
	TableStepLogs = "kiln_step_logs"
)

// column is one column of a table: its name and ClickHouse type (with a
// DEFAULT, if any).
type column struct{ name, typ string }

// table is one of kiln's tables. Its key (ORDER BY) is what makes a row
// unique: ReplacingMergeTree keeps, per key, the row with the highest
// version, so delivering a row twice — or exporting a build again after a
// late change — leaves one row per key once parts merge, and at once for
// queries with FINAL (or argMax … GROUP BY key). Every row of a build is
// partitioned by the build's creation month, so all versions of a key
// land in the same partition (replacing works within a partition only)
// and retention drops whole builds.
type table struct {
	name    string
	columns []column
	orderBy string
}

// Types only from ClickHouse 18.16's set: DateTime('UTC') (seconds; no
// DateTime64 there), durations in milliseconds, flags as UInt8.
var tables = []table{
	{name: TableBuilds, orderBy: "project_id, build_id", columns: []column{
		{"build_id", "String"},
		{"project_id", "String"},
		{"org_id", "String"},
		{"kind", "String"},   // client or source
		{"status", "String"}, // succeeded, failed, canceled
		{"error", "String"},
		{"command", "Int32"},
		{"platforms", "String"},
		{"image_digest", "String"},
		{"created_at", "DateTime('UTC')"},
		{"started_at", "DateTime('UTC')"},
		{"finished_at", "DateTime('UTC')"},
		{"duration_ms", "UInt64"},
		{"total_steps", "UInt32"},
		{"cached_steps", "UInt32"},
		{"saved_ms", "UInt64"},
		{"version", "UInt64"},
	}},
	{name: TableSteps, orderBy: "project_id, build_id, digest", columns: []column{
		{"build_id", "String"},
		{"project_id", "String"},
		{"build_created_at", "DateTime('UTC')"},
		{"digest", "String"},
		{"position", "UInt32"}, // order in which the build first showed the step
		{"name", "String"},
		{"cached", "UInt8"},
		{"counted", "UInt8"}, // counted in total_steps/cached_steps (build.CountedSteps)
		{"started_at", "DateTime('UTC')"},
		{"completed_at", "DateTime('UTC')"},
		{"duration_ms", "UInt64"},
		{"error", "String"},
		{"saved_ms", "UInt64"}, // a cached step: what it took when it last ran uncached
		{"version", "UInt64"},
	}},
	{name: TableStepLogs, orderBy: "project_id, build_id, seq", columns: []column{
		{"build_id", "String"},
		{"project_id", "String"},
		{"build_created_at", "DateTime('UTC')"},
		{"seq", "UInt64"}, // the build's line number, from 1
		{"digest", "String"},
		{"at", "DateTime('UTC')"},
		{"message", "String"},
		{"version", "UInt64"},
	}},
}

// partitionKey is each table's PARTITION BY: the build's creation month.
func (t table) partitionKey() string {
	if t.name == TableBuilds {
		return "toYYYYMM(created_at)"
	}
	return "toYYYYMM(build_created_at)"
}

func (t table) create() string {
	var cols []string
	for _, c := range t.columns {
		cols = append(cols, c.name+" "+c.typ)
	}
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (%s) ENGINE = ReplacingMergeTree(version) PARTITION BY %s ORDER BY (%s)",
		t.name, strings.Join(cols, ", "), t.partitionKey(), t.orderBy)
}

// EnsureSchema creates kiln's database and tables if they do not exist,
// and adds the columns a table lacks — how a newer kiln upgrades the
// schema an older one created (ALTER TABLE … ADD COLUMN, on 18.16 as on
// current releases). Keys and partitioning never change in place: a
// release that needed another key would create a new table.
func (c *ClickHouse) EnsureSchema(ctx context.Context) error {
	if err := c.createDatabase(ctx); err != nil {
		return err
	}
	for _, t := range tables {
		if _, err := c.Exec(ctx, t.create()); err != nil {
			return fmt.Errorf("create %s: %w", t.name, err)
		}
		have, err := c.columns(ctx, t.name)
		if err != nil {
			return err
		}
		for _, col := range t.columns {
			if have[col.name] {
				continue
			}
			if _, err := c.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", t.name, col.name, col.typ)); err != nil {
				return fmt.Errorf("upgrade %s: add %s: %w", t.name, col.name, err)
			}
		}
	}
	return nil
}

func (c *ClickHouse) columns(ctx context.Context, tableName string) (map[string]bool, error) {
	out, err := c.Exec(ctx, fmt.Sprintf("SELECT name FROM system.columns WHERE database = '%s' AND table = '%s' FORMAT JSONEachRow",
		c.database, tableName))
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, line := range bytes.Split(out, []byte("\n")) {
		var r struct{ Name string }
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("columns of %s: %w", tableName, err)
		}
		have[r.Name] = true
	}
	return have, nil
}

// DropExpired drops the monthly partitions of kiln's tables whose whole
// month ended before now - retention (ClickHouse 18.16 has no table TTL;
// a partition is dropped at once, so rows live up to a month longer than
// the retention). It returns the partitions dropped, as "table/YYYYMM".
func (c *ClickHouse) DropExpired(ctx context.Context, now time.Time, retention time.Duration) ([]string, error) {
	var names []string
	for _, t := range tables {
		names = append(names, "'"+t.name+"'")
	}
	out, err := c.Exec(ctx, fmt.Sprintf("SELECT DISTINCT table, partition FROM system.parts WHERE database = '%s' AND active AND table IN (%s) FORMAT JSONEachRow",
		c.database, strings.Join(names, ", ")))
	if err != nil {
		return nil, err
	}
	var dropped []string
	for _, line := range bytes.Split(out, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var p struct{ Table, Partition string }
		if err := json.Unmarshal(line, &p); err != nil {
			return dropped, fmt.Errorf("partitions: %w", err)
		}
		if !expired(p.Partition, now, retention) {
			continue
		}
		if _, err := c.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION %s", p.Table, p.Partition)); err != nil {
			return dropped, fmt.Errorf("drop %s partition %s: %w", p.Table, p.Partition, err)
		}
		dropped = append(dropped, p.Table+"/"+p.Partition)
	}
	return dropped, nil
}

// expired reports whether monthly partition YYYYMM holds only builds
// created more than retention before now: its whole month ended before
// the cutoff. Partitions not named so are never expired.
func expired(partition string, now time.Time, retention time.Duration) bool {
	month, err := time.Parse("200601", partition)
	if err != nil {
		return false
	}
	return month.AddDate(0, 1, 0).Before(now.Add(-retention))
}
