package builder

import (
	"bytes"
	"io"
	"os"
	"sync"
)

// maxLogBytes caps buildkitd.log. When a write would pass it the file becomes
// buildkitd.log.1 (replacing the previous one) and a fresh file is started,
// so at most about twice this much is kept.
const maxLogBytes = 4 << 20

// logFile is an append-only log rotated at maxLogBytes. Writes come from the
// one goroutine copying buildkitd's output; the mutex covers the reads of
// tail from other goroutines.
type logFile struct {
	path string

	mu   sync.Mutex
	f    *os.File
	size int64
}

// openLog starts a new log at path. An existing non-empty log is kept as
// path.1: it is usually the one explaining why the builder is being
// restarted.
func openLog(path string) (*logFile, error) {
	if st, err := os.Stat(path); err == nil && st.Size() > 0 {
		_ = os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &logFile{path: path, f: f}, nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	if l.size > 0 && l.size+int64(len(p)) > maxLogBytes {
		l.f.Close()
		_ = os.Rename(l.path, l.path+".1")
		f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
		if err != nil {
			l.f = nil
			return 0, err
		}
		l.f, l.size = f, 0
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// lastLine returns the last non-empty line of the current log, for error
// messages ("what did buildkitd say before it died?").
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 2048
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		_, _ = f.Seek(-tail, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	b = bytes.TrimRight(b, "\r\n\t ")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	const maxLen = 300
	if len(b) > maxLen {
		b = b[:maxLen]
	}
	return string(b)
}
