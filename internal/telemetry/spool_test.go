package telemetry

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func recs(from, n int) []Record {
	var out []Record
	for i := from; i < from+n; i++ {
		out = append(out, Record{Table: TableSteps, Row: []byte(fmt.Sprintf(`{"i":%d,"pad":"%040d"}`, i, i))})
	}
	return out
}

// drain takes every segment out of the spool, oldest first, and returns
// the rows' "i" in order.
func drain(t *testing.T, s *Spool) []string {
	t.Helper()
	var got []string
	for {
		seg, ok, err := s.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return got
		}
		for _, r := range seg.Records {
			got = append(got, string(r.Row[5:9]))
		}
		if err := s.Remove(seg.Seq); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSpoolDeliversInOrderAndRemovesWhatWasSent(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(SpoolConfig{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 500})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := s.Append(recs(1000+i*3, 3)); err != nil {
			t.Fatal(err)
		}
	}
	if rows, _ := s.Pending(); rows != 30 {
		t.Fatalf("pending rows = %d, want 30", rows)
	}
	got := drain(t, s)
	if len(got) != 30 || got[0] != "1000" || got[29] != "1029" {
		t.Fatalf("rows = %v, want 1000..1029 in order", got)
	}
	if rows, size := s.Pending(); rows != 0 || size != 0 {
		t.Fatalf("after removing every segment: %d rows, %d bytes pending", rows, size)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if len(left) != 0 {
		t.Fatalf("segment files left after delivery: %v", left)
	}
}

func TestSpoolFullDropsTheOldestRowsAndCountsThem(t *testing.T) {
	s, err := OpenSpool(SpoolConfig{Dir: t.TempDir(), MaxBytes: 2000, SegmentBytes: 400})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		if err := s.Append(recs(1000+i*2, 2)); err != nil {
			t.Fatal(err)
		}
		if _, size := s.Pending(); size > 2000 {
			t.Fatalf("spool holds %d bytes, bound is 2000", size)
		}
	}
	rows, _ := s.Pending()
	if s.Dropped() == 0 || int(s.Dropped())+rows != 80 {
		t.Fatalf("dropped %d + pending %d rows, want 80 in all with some dropped", s.Dropped(), rows)
	}
	got := drain(t, s)
	if got[len(got)-1] != "1079" {
		t.Fatalf("newest row = %s, want 1079 (the oldest are dropped, not the newest)", got[len(got)-1])
	}
	if got[0] == "1000" {
		t.Fatal("the oldest row survived a full spool")
	}
}

func TestSpoolNeverDropsTheSegmentBeingSent(t *testing.T) {
	s, err := OpenSpool(SpoolConfig{Dir: t.TempDir(), MaxBytes: 1000, SegmentBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(recs(1000, 3)); err != nil {
		t.Fatal(err)
	}
	seg, ok, err := s.Oldest()
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	for i := 0; i < 20; i++ {
		_ = s.Append(recs(2000+i*2, 2))
	}
	// The in-flight segment is still on disk, so delivering it is not
	// wasted and removing it works.
	if _, err := os.Stat(s.path(seg.Seq)); err != nil {
		t.Fatalf("in-flight segment dropped: %v", err)
	}
	if err := s.Remove(seg.Seq); err != nil {
		t.Fatal(err)
	}
	if _, size := s.Pending(); size > 1000 {
		t.Fatalf("spool holds %d bytes, bound is 1000", size)
	}
}

func TestSpoolRefusesAnAppendLargerThanItsBound(t *testing.T) {
	s, err := OpenSpool(SpoolConfig{Dir: t.TempDir(), MaxBytes: 200})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(recs(1000, 10)); err == nil {
		t.Fatal("an append of more than the bound was accepted")
	}
	if s.Dropped() != 10 {
		t.Fatalf("dropped = %d, want 10", s.Dropped())
	}
}

func TestSpoolResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(SpoolConfig{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := s.Append(recs(1000+i*2, 2)); err != nil {
			t.Fatal(err)
		}
	}
	// One segment was delivered before the "crash"; the rest were not.
	seg, _, _ := s.Oldest()
	if err := s.Remove(seg.Seq); err != nil {
		t.Fatal(err)
	}
	delivered := len(seg.Records)
	// No Close: a crash leaves the active segment open.
	s2, err := OpenSpool(SpoolConfig{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	if rows, _ := s2.Pending(); rows != 10-delivered {
		t.Fatalf("after restart %d rows pending, want %d", rows, 10-delivered)
	}
	if err := s2.Append(recs(1010, 2)); err != nil {
		t.Fatal(err)
	}
	got := drain(t, s2)
	if len(got) != 12-delivered || got[len(got)-1] != "1011" {
		t.Fatalf("rows after restart = %v", got)
	}
}

func TestSpoolSkipsACorruptedTailAndKeepsTheRest(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(SpoolConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(recs(1000, 4)); err != nil {
		t.Fatal(err)
	}
	path := s.path(s.active.seq)
	// A crash mid-write: half a line, no newline.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`0badc0de kiln_steps {"i":99`)
	f.Close()
	s2, err := OpenSpool(SpoolConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Append(recs(1004, 1)); err != nil {
		t.Fatal(err)
	}
	got := drain(t, s2)
	if fmt.Sprint(got) != "[1000 1001 1002 1003 1004]" {
		t.Fatalf("rows = %v, want the 5 whole ones", got)
	}
	if s2.Corrupt() != 1 {
		t.Fatalf("corrupt lines = %d, want 1", s2.Corrupt())
	}

	// A flipped byte inside a line is caught by its checksum.
	s3, _ := OpenSpool(SpoolConfig{Dir: dir})
	if err := s3.Append(recs(2000, 3)); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(s3.path(s3.active.seq))
	data[len(data)/2] ^= 0x01
	os.WriteFile(s3.path(s3.active.seq), data, 0o600)
	got = drain(t, s3)
	if len(got) != 2 || s3.Corrupt() != 1 {
		t.Fatalf("rows = %v, corrupt = %d; want 2 rows and 1 corrupt line", got, s3.Corrupt())
	}
}

// dirBytes is the size of every file in dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += info.Size()
	}
	return n
}

// With ClickHouse refusing every segment, what is set aside stays within
// the bound: the oldest set-aside segments are deleted first, the newest
// kept for an operator, and the spool still takes new rows.
func TestSpoolBoundsSegmentsSetAside(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(SpoolConfig{Dir: dir, MaxBytes: 2000, SegmentBytes: 400})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := 0; i < 40; i++ {
		if err := s.Append(recs(1000+i*4, 4)); err != nil {
			t.Fatal(err)
		}
		seg, ok, err := s.Oldest()
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		if err := s.SetAside(seg.Seq); err != nil {
			t.Fatal(err)
		}
		last = seg.Seq
		if n := dirBytes(t, dir); n > 2000 {
			t.Fatalf("after %d refused segments the spool's directory holds %d bytes, bound is 2000", i+1, n)
		}
	}
	if s.RejectedDeleted() == 0 {
		t.Fatal("no set-aside segment deleted")
	}
	if _, err := os.Stat(s.path(last) + rejectedExt); err != nil {
		t.Fatalf("the newest set-aside segment is gone: %v", err)
	}
	if _, err := os.Stat(s.path(1) + rejectedExt); err == nil {
		t.Fatal("the oldest set-aside segment survived")
	}

	// A restart counts them too, and deletes the oldest past a smaller bound.
	s2, err := OpenSpool(SpoolConfig{Dir: dir, MaxBytes: 500})
	if err != nil {
		t.Fatal(err)
	}
	if n := dirBytes(t, dir); n > 500 || s2.RejectedDeleted() == 0 {
		t.Fatalf("reopened with a bound of 500: %d bytes on disk, %d set-aside segments deleted", n, s2.RejectedDeleted())
	}
	if _, err := os.Stat(s2.path(last) + rejectedExt); err != nil {
		t.Fatalf("the newest set-aside segment is gone: %v", err)
	}
	if err := s2.Append(recs(2000, 2)); err != nil {
		t.Fatal(err)
	}
	if s2.next <= last {
		t.Fatalf("next segment %d would reuse a set-aside segment's number (%d)", s2.next, last)
	}
}
