package runner

import (
	"context"
	"time"
)

// sweep deletes contexts whose retention ended, with their blobs, until
// ctx ends. A blob is deleted before its record, so a failure leaves the
// record for the next sweep to retry.
func (r *Runner) sweep(ctx context.Context) {
	every := min(max(r.cfg.ContextRetention/10, time.Second), time.Hour)
	for {
		var err error
		if r.cfg.Cluster != nil {
			// One replica at a time: the others skip this tick.
			_, err = r.cfg.Cluster.Exclusive(ctx, "context-retention", r.SweepContexts)
		} else {
			err = r.SweepContexts(ctx)
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("context retention sweep", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// SweepContexts deletes every context whose retention has ended.
func (r *Runner) SweepContexts(ctx context.Context) error {
	for {
		expired, err := r.store.ListExpiredContexts(ctx, time.Now(), 100)
		if err != nil || len(expired) == 0 {
			return err
		}
		for _, c := range expired {
			if err := r.blobs.Delete(ctx, c.BlobKey); err != nil {
				return err
			}
			if err := r.store.DeleteContext(ctx, c.Key); err != nil {
				return err
			}
			r.log.Debug("context deleted after retention", "context_key", c.Key, "project_id", c.ProjectID)
		}
	}
}
