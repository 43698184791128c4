package runner

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/units"
)

// DefaultContextBytesPerProject is Config.MaxContextBytesPerProject's
// default.
const DefaultContextBytesPerProject = 10 << 30

// The upload quota. A project's retained contexts may hold at most
// MaxContextBytesPerProject bytes of storage. A context is charged what it
// can hold before it is uploaded, so that outstanding URLs can't together
// overrun the quota: its declared size, or else the most its URL accepts
// (the smaller of the largest upload and the quota left). Once its stored
// size is known it is settled: charged that size, or nothing if its URL
// expired unused. Uploads are one per URL, so a settled size stays.
// Settling happens when a build first uses the context, and for a
// project's older contexts when a new upload would not fit.

// maxSettle bounds the contexts one GenerateUploadURL looks at in storage.
const maxSettle = 200

// reserve decides what a new context of proj is charged, and the most its
// URL accepts. size is the declared size, 0 if unknown.
func (r *Runner) reserve(ctx context.Context, projectID string, size int64, now time.Time) (charge, urlMax int64, err error) {
	quota, largest := r.cfg.MaxContextBytesPerProject, r.cfg.Archive.CompressedBytes
	need := size
	if need == 0 {
		need = 1 // an undeclared upload needs some room; it gets what is left
	}
	used, err := r.store.ContextBytes(ctx, projectID, now)
	if err != nil {
		return 0, 0, err
	}
	if quota-used < need {
		if err := r.settle(ctx, projectID, now); err != nil {
			return 0, 0, err
		}
		if used, err = r.store.ContextBytes(ctx, projectID, now); err != nil {
			return 0, 0, err
		}
	}
	free := quota - used
	if free < need {
		return 0, 0, fmt.Errorf("project %s holds %s of uploaded contexts, of a quota of %s, and this upload needs %s more: "+
			"contexts are deleted %s after upload; wait for older ones to go, declare the upload's size (undeclared uploads reserve what is left), or ask the operator to raise --max-context-bytes-per-project: %w",
			projectID, units.Bytes(used), units.Bytes(quota), units.Bytes(need), r.cfg.ContextRetention, errdefs.ErrExhausted)
	}
	if size > 0 {
		return size, largest, nil
	}
	urlMax = min(largest, free)
	return urlMax, urlMax, nil
}

// settle looks up, in storage, the size of a project's unsettled contexts
// and charges them that; one whose URL expired without an upload is
// charged nothing.
func (r *Runner) settle(ctx context.Context, projectID string, now time.Time) error {
	list, err := r.store.ListUnsettledContexts(ctx, projectID, now, maxSettle)
	if err != nil {
		return err
	}
	for _, c := range list {
		info, err := r.blobs.Stat(ctx, c.BlobKey)
		switch {
		case err == nil:
			err = r.store.SettleContext(ctx, c.Key, info.Size)
		case errdefs.IsNotFound(err) && now.After(c.CreatedAt.Add(r.cfg.UploadTTL)):
			err = r.store.SettleContext(ctx, c.Key, 0)
		case errdefs.IsNotFound(err):
			err = nil // its URL may still be used: keep the reservation
		}
		if err != nil {
			return fmt.Errorf("context %s: %w", c.Key, err)
		}
	}
	return nil
}

// settleOne charges an uploaded context its stored size, if not yet done.
func (r *Runner) settleOne(ctx context.Context, c store.Context, size int64) {
	if c.Settled {
		return
	}
	if err := r.store.SettleContext(ctx, c.Key, size); err != nil {
		r.log.WarnContext(ctx, "settle context quota", "context_key", c.Key, "err", err)
	}
}

// lockProject serializes GenerateUploadURL within one project (another
// project's uploads, and their settling, never wait on it); call the
// returned func to unlock.
func (r *Runner) lockProject(projectID string) func() {
	r.uploadMu.Lock()
	l := r.uploadLocks[projectID]
	if l == nil {
		l = &projectLock{}
		r.uploadLocks[projectID] = l
	}
	l.refs++
	r.uploadMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		r.uploadMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(r.uploadLocks, projectID)
		}
		r.uploadMu.Unlock()
	}
}

type projectLock struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by Runner.uploadMu
}
