package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// minFreeData is the least room kiln's data disk must have for the server
// to call itself ready: below it, the database, uploads and builders'
// state are about to fail their writes. 16 MiB holds a burst of build
// records and logs; it is not room for builds, which the operator sizes.
const minFreeData = 16 << 20

// readyStore is what readiness asks the store: build ends a full disk
// refused that wait to be written (store/diskfull.go), and whether the
// database answers (a Postgres on another machine may not).
type readyStore interface {
	PendingEnds() int
	Ping(ctx context.Context) error
}

// readiness answers GET /readyz: 200 "ok" while the server can take
// builds, 503 saying why not otherwise. It is unauthenticated (a load
// balancer asks it), so its answer names no path and no project.
type readiness struct {
	dataDir string
	store   readyStore // nil: a store that can tell neither
	logger  *slog.Logger

	mu   sync.Mutex
	last string // the previous answer's reasons, to log changes only
}

func (rd *readiness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var why []string
	if free := store.FreeBytes(rd.dataDir); free >= 0 && free < minFreeData {
		why = append(why, errdefs.DiskFull(free).Error())
	}
	if rd.store != nil {
		if n := rd.store.PendingEnds(); n > 0 {
			why = append(why, fmt.Sprintf("%d finished builds wait for room on the data disk to be recorded", n))
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		if err := rd.store.Ping(ctx); err != nil {
			why = append(why, "kiln's database does not answer")
		}
		cancel()
	}
	reasons := strings.Join(why, "; ")
	rd.mu.Lock()
	changed := reasons != rd.last
	rd.last = reasons
	rd.mu.Unlock()
	if changed {
		if reasons == "" {
			rd.logger.Info("ready again")
		} else {
			rd.logger.Warn("not ready", "reason", reasons)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if reasons != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", reasons)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *Server) readiness() *readiness {
	rd := &readiness{dataDir: s.cfg.DataDir, logger: s.cfg.Logger}
	if p, ok := s.store.(readyStore); ok {
		rd.store = p
	}
	return rd
}
