package session

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/ticker"
)

// A builder that stops (SIGSTOP, a hung disk) keeps its connection open
// and says nothing: the solve just waits. kiln's server notices and
// restarts such a builder after its stall timeout, failing the build; the
// client meanwhile tells its user what is going on, once the builders have
// shown no sign of life (a status update, an answer to a liveness probe)
// for stallWarnAfter. A long step that prints nothing is not a stall: its
// builder still answers the probe.

const (
	stallWarnAfter = 30 * time.Second
	stallProbe     = 10 * time.Second // how often each builder is asked
	stallProbeWait = 5 * time.Second  // how long one answer may take
)

// stallWatch tracks the last sign of life of a solve's builders.
type stallWatch struct {
	warnAfter, every, wait time.Duration
	probes                 []func(context.Context) error // one per builder; any answer is a sign of life
	w                      io.Writer

	mu     sync.Mutex
	last   time.Time // last sign of life
	warned bool      // the warning for the current silence was printed
}

// watchBuilders starts a stall watch of clients, warning on w; stop ends it.
func watchBuilders(clients []*client.Client, w io.Writer) (*stallWatch, func()) {
	if w == nil {
		w = io.Discard
	}
	sw := &stallWatch{warnAfter: stallWarnAfter, every: stallProbe, wait: stallProbeWait, w: w}
	for _, c := range clients {
		sw.probes = append(sw.probes, func(ctx context.Context) error {
			_, err := c.ListWorkers(ctx)
			return err
		})
	}
	return sw, sw.start()
}

func (sw *stallWatch) start() (stop func()) {
	sw.last = time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, p := range sw.probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sw.probeLoop(ctx, p)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		sw.warnLoop(ctx)
	}()
	return func() { cancel(); wg.Wait() }
}

// alive records a sign of life.
func (sw *stallWatch) alive() {
	sw.mu.Lock()
	sw.last, sw.warned = time.Now(), false
	sw.mu.Unlock()
}

func (sw *stallWatch) probeLoop(ctx context.Context, probe func(context.Context) error) {
	ticker.Run(ctx.Done(), sw.every, func(time.Time, time.Duration) {
		pctx, cancel := context.WithTimeout(ctx, sw.wait)
		defer cancel()
		if probe(pctx) == nil {
			sw.alive()
		}
	})
}

func (sw *stallWatch) warnLoop(ctx context.Context) {
	ticker.Run(ctx.Done(), min(sw.warnAfter/10, time.Second), func(time.Time, time.Duration) {
		sw.mu.Lock()
		silent := time.Since(sw.last)
		warn := !sw.warned && silent >= sw.warnAfter
		if warn {
			sw.warned = true
		}
		sw.mu.Unlock()
		if warn {
			fmt.Fprintf(sw.w, "kiln: no progress from the builder for %s and it does not answer; kiln restarts a builder that stops responding, and this build then fails (kiln serve --builder-stall-timeout)\n",
				silent.Round(time.Second))
		}
	})
}
