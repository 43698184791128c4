// Package telemetry exports finished builds — the build, its steps and
// their logs — to ClickHouse for analysis (docs/insights.md).
//
// The export never slows or fails a build: the [Exporter] is a
// build.Observer that only queues a build's id; a worker reads the build
// from the store after it settled and writes its rows to a [Spool] on disk
// (append-only, fsynced segment files, bounded in size: when full, the
// oldest rows are dropped and counted); a sender delivers the spool's
// segments to ClickHouse's HTTP interface in batches (INSERT … FORMAT
// JSONEachRow) and deletes a segment only once ClickHouse acknowledged it,
// retrying with backoff while ClickHouse is down or slow. Rows carry
// idempotent keys (build id, step digest, log sequence) in
// ReplacingMergeTree tables, so a segment delivered twice (an
// acknowledgement lost, kiln restarted mid-send) is one row per key to
// queries that use FINAL or GROUP BY.
//
// The schema works on ClickHouse 18.16 (what Debian 12 packages: no table
// TTL, no DateTime64) as on current releases: monthly partitions, which
// kiln drops once they are older than the retention.
//
// The package depends on the build domain's records only; it knows nothing
// of kiln's servers or APIs, and logs through the logger it is given.
package telemetry
