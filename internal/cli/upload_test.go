package cli

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// fakeClock advances by step on every reading.
func fakeClock(step time.Duration) func() time.Time {
	t := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	return func() time.Time {
		t = t.Add(step)
		return t
	}
}

// readInChunks reads all of r, n bytes at a time.
func readInChunks(t *testing.T, r io.Reader, n int) {
	t.Helper()
	buf := make([]byte, n)
	for {
		_, err := r.Read(buf)
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestUploadProgressLines(t *testing.T) {
	var out bytes.Buffer
	p := newUploadProgress(&out, progressLines, "context", 40<<20)
	p.now = fakeClock(time.Second)
	readInChunks(t, p.Reader(bytes.NewReader(make([]byte, 40<<20))), 1<<20)
	p.Done()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := []string{
		"uploading context: 40.0 MiB",
		"uploading context: 25% (10.0 MiB / 40.0 MiB)",
		"uploading context: 50% (20.0 MiB / 40.0 MiB)",
		"uploading context: 75% (30.0 MiB / 40.0 MiB)",
	}
	if len(lines) != 5 || strings.Join(lines[:4], "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines:\n%s", out.String())
	}
	if !strings.HasPrefix(lines[4], "uploaded context: 40.0 MiB in ") || !strings.HasSuffix(lines[4], " MiB/s)") {
		t.Errorf("last line %q", lines[4])
	}
}

func TestUploadProgressBar(t *testing.T) {
	var out bytes.Buffer
	p := newUploadProgress(&out, progressBar, "context", 1000)
	p.now = func() time.Time { return time.Unix(100, 0) } // the clock stands still: no redraws
	readInChunks(t, p.Reader(bytes.NewReader(make([]byte, 1000))), 10)
	p.Done()
	s := out.String()
	if n := strings.Count(s, "\r"); n != 2 {
		t.Errorf("%d draws while the clock stood still, want the first and the last:\n%q", n, s)
	}
	last := s[strings.LastIndex(s, "\r")+1:]
	if !strings.HasPrefix(last, "uploading context  ["+strings.Repeat("=", barWidth)+"]  1000 B / 1000 B  ") || !strings.HasSuffix(last, "\n") {
		t.Errorf("final bar %q", last)
	}

	out.Reset()
	p = newUploadProgress(&out, progressBar, "context", 1000)
	p.now = fakeClock(time.Second) // every read is a second later: a redraw each
	readInChunks(t, p.Reader(bytes.NewReader(make([]byte, 1000))), 250)
	p.Done()
	if !strings.Contains(out.String(), "\ruploading context  [=======>") {
		t.Errorf("no partial bar:\n%q", out.String())
	}
}

func TestUploadProgressQuiet(t *testing.T) {
	var out bytes.Buffer
	for _, mode := range []string{"quiet", "rawjson"} {
		p := newUploadProgress(&out, uploadProgressStyle(mode, &out), "context", 100)
		readInChunks(t, p.Reader(bytes.NewReader(make([]byte, 100))), 7)
		p.Done()
	}
	if out.Len() != 0 {
		t.Errorf("quiet printed %q", out.String())
	}
	if s := uploadProgressStyle("auto", &out); s != progressLines {
		t.Errorf("auto on a buffer = %v, want lines", s)
	}
	if s := uploadProgressStyle("tty", &out); s != progressBar {
		t.Errorf("tty = %v, want the bar", s)
	}
}
