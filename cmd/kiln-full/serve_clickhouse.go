package main

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/telemetry"
)

// clickhouseServeExample shows the export flags in `kiln serve --help`.
const clickhouseServeExample = `
  # finished builds, their steps and logs exported to ClickHouse (docs/insights.md):
  kiln serve --clickhouse-url 'http://127.0.0.1:8123/?database=kiln' --clickhouse-retention 90d`

// registerClickHouseFlags adds `kiln serve`'s flags for the ClickHouse
// export.
func registerClickHouseFlags(f *pflag.FlagSet, cfg *telemetry.Config) {
	f.StringVar(&cfg.URL, "clickhouse-url", os.Getenv("KILN_CLICKHOUSE_URL"),
		"export finished builds, their steps and logs to ClickHouse's HTTP interface, e.g. http://127.0.0.1:8123/?database=kiln (user and password in the URL); rows wait in DATA/telemetry while it is down (env KILN_CLICKHOUSE_URL)")
	cfg.Retention = telemetry.DefaultRetention
	f.Var(cliflag.Retention{D: &cfg.Retention}, "clickhouse-retention",
		"drop exported builds older than this (whole months, by the build's creation), e.g. 90d")
	f.Int64Var(&cfg.MaxBytes, "clickhouse-spool-bytes", telemetry.DefaultMaxBytes,
		"bound of the rows waiting on disk for ClickHouse; when full, the oldest are dropped and counted")
}
