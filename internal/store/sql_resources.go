package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// Builder resource samples and events of builds (build/resources.go).

func (s *SQL) PutResourceSamples(ctx context.Context, samples []build.ResourceSample) error {
	if len(samples) == 0 {
		return nil
	}
	// Each statement on its own (not prepared): on Postgres only then do
	// its arguments go through the store's conversions (dialect.go).
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, r := range samples {
			if ok, err := s.buildExists(ctx, tx, r.BuildID); !ok {
				if err != nil {
					return err
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO build_resource_samples
				(build_id, at, interval_ms, cpu_millicores, memory_bytes, memory_peak_bytes, memory_limit_bytes, io_read_bytes, io_write_bytes)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (build_id, at) DO NOTHING`,
				r.BuildID, ms(r.At), r.Interval.Milliseconds(), int64(r.CPUCores*1000+0.5),
				r.Memory, r.MemoryPeak, r.MemoryLimit, r.IORead, r.IOWrite); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *SQL) PutResourceEvents(ctx context.Context, events []build.ResourceEvent) error {
	if len(events) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, e := range events {
			if ok, err := s.buildExists(ctx, tx, e.BuildID); !ok {
				if err != nil {
					return err
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO build_resource_events
				(build_id, at, kind, message, count, memory_bytes, memory_limit_bytes)
				VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (build_id, at, kind) DO NOTHING`,
				e.BuildID, ms(e.At), e.Kind, e.Message, e.Count, e.Memory, e.MemoryLimit); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *SQL) ListResourceSamples(ctx context.Context, buildID string) ([]build.ResourceSample, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT at, interval_ms, cpu_millicores, memory_bytes, memory_peak_bytes, memory_limit_bytes, io_read_bytes, io_write_bytes
		FROM build_resource_samples WHERE build_id = ? ORDER BY at`, buildID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []build.ResourceSample
	for rows.Next() {
		r := build.ResourceSample{BuildID: buildID}
		var at, interval, milli int64
		if err := rows.Scan(&at, &interval, &milli, &r.Memory, &r.MemoryPeak, &r.MemoryLimit, &r.IORead, &r.IOWrite); err != nil {
			return nil, err
		}
		r.At, r.Interval, r.CPUCores = fromMs(at), time.Duration(interval)*time.Millisecond, float64(milli)/1000
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *SQL) ListResourceEvents(ctx context.Context, buildID string) ([]build.ResourceEvent, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT at, kind, message, count, memory_bytes, memory_limit_bytes
		FROM build_resource_events WHERE build_id = ? ORDER BY at, kind`, buildID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []build.ResourceEvent
	for rows.Next() {
		e := build.ResourceEvent{BuildID: buildID}
		var at int64
		if err := rows.Scan(&at, &e.Kind, &e.Message, &e.Count, &e.Memory, &e.MemoryLimit); err != nil {
			return nil, err
		}
		e.At = fromMs(at)
		out = append(out, e)
	}
	return out, rows.Err()
}
