package runner

import "sync"

// hub wakes the watchers of a build when something about it was stored.
// It carries no data: watchers read the store, which is the one source of
// truth, so a wake-up that comes early, late or twice loses nothing.
type hub struct {
	mu    sync.Mutex
	waits map[string]chan struct{} // build id → closed on the next change
}

func newHub() *hub { return &hub{waits: map[string]chan struct{}{}} }

// wait returns a channel closed at the build's next change.
func (h *hub) wait(buildID string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, ok := h.waits[buildID]
	if !ok {
		ch = make(chan struct{})
		h.waits[buildID] = ch
	}
	return ch
}

// notify wakes everyone waiting on the build.
func (h *hub) notify(buildID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.waits[buildID]; ok {
		close(ch)
		delete(h.waits, buildID)
	}
}

// release forgets a wait channel its watcher no longer needs, unless a
// notify already replaced it. Another watcher holding the same channel then
// falls back to polling until its next wait.
func (h *hub) release(buildID string, ch <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.waits[buildID]; ok && (<-chan struct{})(cur) == ch {
		delete(h.waits, buildID)
	}
}
