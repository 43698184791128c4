// Package metrics is kiln serve's Prometheus instrumentation: the
// metrics themselves, on a registry of kiln's own (with the Go runtime's
// and the process's), and the small adapters that feed them — a
// build.Observer for builds' lives, a Connect interceptor for API calls,
// HTTP wrappers counting registry and upload bytes, a collector reading
// the builder fleet's state at scrape time, and a hook for builder
// acquire latency.
//
// Every label takes values from a small fixed set (build kinds and
// statuses, builder states, Connect procedures kiln registered and
// Connect codes): never a build, project or token id, so the number of
// series does not grow with use. docs/operating.md lists every metric.
//
// The package depends on the domain types it reads (build, builder) and
// on nothing of the server; nothing in it blocks the path of a request:
// what needs the store (a finished build's steps) is queued and read by
// Run's goroutine.
package metrics
