package telemetry

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Record is one row for one table: Row is a JSON object (JSONEachRow).
type Record struct {
	Table string
	Row   []byte
}

// SpoolConfig sizes a spool; zero values take the defaults noted.
type SpoolConfig struct {
	// Dir holds the segment files (created if missing).
	Dir string
	// MaxBytes bounds the spool's size on disk, segments set aside
	// included; when an append would pass it, the oldest set-aside
	// segments are deleted first (RejectedDeleted), then the oldest
	// waiting segments, their rows counted (Dropped). 0 → 512 MiB.
	MaxBytes int64
	// SegmentBytes is the size after which a new segment is started (one
	// append is never split, so a segment may be larger). 0 → MaxBytes/16.
	SegmentBytes int64
}

// Spool is an on-disk queue of rows waiting for ClickHouse: append-only
// segment files, each line one record ("crc32 table json"), fsynced on
// every Append. The sender takes the oldest sealed segment (Oldest) and
// removes it once delivered (Remove); a restart finds every segment not
// removed. A torn or corrupted line (a crash mid-write, a damaged disk)
// is skipped when the segment is read and counted (Corrupt).
//
// Spool is safe for concurrent use; mu guards everything but the counters.
type Spool struct {
	cfg SpoolConfig

	mu     sync.Mutex
	sealed []*segment // oldest first; never written again
	active *segment   // being appended to; nil until the first Append
	file   *os.File   // active's file
	next   uint64     // the next segment's sequence number
	total  int64      // bytes of sealed and active segments
	// rejected are the segments set aside (SetAside), oldest first, and
	// rejectedBytes their size: kept for an operator while they fit.
	rejected      []*segment
	rejectedBytes int64
	// inflight is the segment Oldest handed out and not yet Removed: it is
	// never dropped to make room (its rows may be arriving in ClickHouse).
	inflight uint64

	dropped         atomic.Uint64
	corrupt         atomic.Uint64
	rejectedDeleted atomic.Uint64
}

type segment struct {
	seq   uint64
	bytes int64
	rows  int
}

// Segment is a sealed segment's records, as Oldest reads them.
type Segment struct {
	Seq     uint64
	Records []Record
}

const (
	segmentExt  = ".rows"
	rejectedExt = ".rejected" // after segmentExt: a segment set aside
)

// OpenSpool opens (or creates) the spool in cfg.Dir. Segments a previous
// run left are kept, sealed, oldest first; new rows go to a new segment,
// never after a torn line. Set-aside segments past the bound are deleted,
// oldest first.
func OpenSpool(cfg SpoolConfig) (*Spool, error) {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = max(cfg.MaxBytes/16, 1)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("telemetry spool: %w", err)
	}
	s := &Spool{cfg: cfg, next: 1} // sequence 0 means none (inflight)
	entries, err := os.ReadDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("telemetry spool: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if base, ok := strings.CutSuffix(e.Name(), rejectedExt); ok {
			if seq, ok := segmentSeq(base); ok {
				info, err := e.Info()
				if err != nil {
					return nil, fmt.Errorf("telemetry spool: %w", err)
				}
				s.rejected = append(s.rejected, &segment{seq: seq, bytes: info.Size()})
				s.rejectedBytes += info.Size()
				s.next = max(s.next, seq+1) // never set aside over it again
			}
			continue
		}
		seq, ok := segmentSeq(e.Name())
		if !ok {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("telemetry spool: %w", err)
		}
		recs, _, err := s.readSegment(seq)
		if err != nil {
			return nil, err
		}
		s.sealed = append(s.sealed, &segment{seq: seq, bytes: info.Size(), rows: len(recs)})
		s.total += info.Size()
		s.next = max(s.next, seq+1)
	}
	slices.SortFunc(s.sealed, func(a, b *segment) int { return cmpUint(a.seq, b.seq) })
	slices.SortFunc(s.rejected, func(a, b *segment) int { return cmpUint(a.seq, b.seq) })
	for s.total+s.rejectedBytes > cfg.MaxBytes {
		if !s.deleteOldestRejected() {
			break // what waits to be sent stays: Append makes room
		}
	}
	return s, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func segmentSeq(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, segmentExt)
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(base, 10, 64)
	return seq, err == nil
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.cfg.Dir, fmt.Sprintf("%016d%s", seq, segmentExt))
}

// encode frames one record as a line: crc32 (IEEE, hex) of "table json",
// a space, the table, a space, the JSON.
func encode(buf *bytes.Buffer, r Record) {
	body := make([]byte, 0, len(r.Table)+1+len(r.Row))
	body = append(append(append(body, r.Table...), ' '), r.Row...)
	fmt.Fprintf(buf, "%08x ", crc32.ChecksumIEEE(body))
	buf.Write(body)
	buf.WriteByte('\n')
}

// decode reads a line encode wrote (without its newline); ok is false for
// a line that is not one (torn, corrupted).
func decode(line []byte) (Record, bool) {
	if len(line) < 10 || line[8] != ' ' {
		return Record{}, false
	}
	want, err := strconv.ParseUint(string(line[:8]), 16, 32)
	if err != nil {
		return Record{}, false
	}
	body := line[9:]
	if uint64(crc32.ChecksumIEEE(body)) != want {
		return Record{}, false
	}
	table, row, ok := bytes.Cut(body, []byte{' '})
	if !ok || len(table) == 0 || len(row) == 0 {
		return Record{}, false
	}
	return Record{Table: string(table), Row: slices.Clone(row)}, true
}

// Append writes recs to the spool as one unit (never split across
// segments) and fsyncs it. If the spool would pass its bound, the oldest
// segments are dropped first; recs larger than the whole bound are
// dropped themselves. Either way the rows dropped are counted.
func (s *Spool) Append(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	var buf bytes.Buffer
	for _, r := range recs {
		if strings.ContainsAny(r.Table, " \n") || bytes.ContainsRune(r.Row, '\n') {
			return fmt.Errorf("telemetry spool: record for %q is not one line", r.Table)
		}
		encode(&buf, r)
	}
	need := int64(buf.Len())
	s.mu.Lock()
	defer s.mu.Unlock()
	if need > s.cfg.MaxBytes {
		s.dropped.Add(uint64(len(recs)))
		return fmt.Errorf("telemetry spool: %d rows (%d bytes) exceed the spool's bound of %d bytes: dropped", len(recs), need, s.cfg.MaxBytes)
	}
	if s.active != nil && s.active.bytes > 0 && s.active.bytes+need > s.cfg.SegmentBytes {
		if err := s.seal(); err != nil {
			return err
		}
	}
	// Set-aside segments go first (nothing will send them), then rows
	// waiting to be sent, oldest first.
	for s.total+s.rejectedBytes+need > s.cfg.MaxBytes {
		if !s.deleteOldestRejected() && !s.dropOldest() {
			s.dropped.Add(uint64(len(recs)))
			return fmt.Errorf("telemetry spool: full (%d bytes) with rows being sent: %d rows dropped", s.total, len(recs))
		}
	}
	if s.active == nil {
		f, err := os.OpenFile(s.path(s.next), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("telemetry spool: %w", err)
		}
		if err := syncDir(s.cfg.Dir); err != nil {
			f.Close()
			return err
		}
		s.active, s.file = &segment{seq: s.next}, f
		s.next++
	}
	n, err := s.file.Write(buf.Bytes())
	s.active.bytes += int64(n)
	s.total += int64(n)
	if err == nil {
		err = s.file.Sync()
	}
	if err != nil {
		// A partial line is skipped when read; start afresh after it.
		_ = s.seal()
		return fmt.Errorf("telemetry spool: %w", err)
	}
	s.active.rows += len(recs)
	return nil
}

// seal closes the active segment: it is the newest sealed one now.
func (s *Spool) seal() error {
	if s.active == nil {
		return nil
	}
	err := s.file.Close()
	s.sealed = append(s.sealed, s.active)
	s.active, s.file = nil, nil
	if err != nil {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	return nil
}

// deleteOldestRejected deletes the oldest set-aside segment; false if
// there is none (or it cannot be deleted). Its rows were counted as
// dropped when it was set aside.
func (s *Spool) deleteOldestRejected() bool {
	if len(s.rejected) == 0 {
		return false
	}
	g := s.rejected[0]
	if err := os.Remove(s.path(g.seq) + rejectedExt); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	s.rejected = s.rejected[1:]
	s.rejectedBytes -= g.bytes
	s.rejectedDeleted.Add(1)
	return true
}

// dropOldest removes the oldest segment that is not in flight, sealing
// the active one if it is all there is; false if nothing can go.
func (s *Spool) dropOldest() bool {
	for {
		for i, seg := range s.sealed {
			if seg.seq == s.inflight {
				continue
			}
			if err := os.Remove(s.path(seg.seq)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return false
			}
			s.sealed = slices.Delete(s.sealed, i, i+1)
			s.total -= seg.bytes
			s.dropped.Add(uint64(seg.rows))
			return true
		}
		if s.active == nil || s.seal() != nil {
			return false
		}
	}
}

// Oldest returns the oldest segment's records, sealing the active segment
// first if no other is waiting, and marks it in flight; ok is false when
// the spool is empty. Rows of corrupted lines are left out (Corrupt).
func (s *Spool) Oldest() (seg Segment, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sealed) == 0 {
		if s.active == nil || s.active.rows == 0 {
			return Segment{}, false, nil
		}
		if err := s.seal(); err != nil {
			return Segment{}, false, err
		}
	}
	oldest := s.sealed[0]
	recs, bad, err := s.readSegment(oldest.seq)
	if err != nil {
		return Segment{}, false, err
	}
	s.corrupt.Add(uint64(bad))
	s.inflight = oldest.seq
	return Segment{Seq: oldest.seq, Records: recs}, true, nil
}

// readSegment reads a segment's valid records and counts the lines that
// are not (torn, corrupted). A last line whose newline was not written
// but whose checksum holds is whole, and kept.
func (s *Spool) readSegment(seq uint64) ([]Record, int, error) {
	data, err := os.ReadFile(s.path(seq))
	if err != nil {
		return nil, 0, fmt.Errorf("telemetry spool: %w", err)
	}
	var recs []Record
	bad := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		r, ok := decode(sc.Bytes())
		if !ok {
			bad++
			continue
		}
		recs = append(recs, r)
	}
	return recs, bad, sc.Err()
}

// Remove deletes a delivered segment.
func (s *Spool) Remove(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == seq {
		s.inflight = 0
	}
	i := slices.IndexFunc(s.sealed, func(g *segment) bool { return g.seq == seq })
	if i < 0 {
		return nil // dropped meanwhile
	}
	if err := os.Remove(s.path(seq)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	s.total -= s.sealed[i].bytes
	s.sealed = slices.Delete(s.sealed, i, i+1)
	return nil
}

// Release gives back the in-flight mark of a segment that was not
// delivered (it stays the oldest, to be tried again).
func (s *Spool) Release(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == seq {
		s.inflight = 0
	}
}

// SetAside moves a segment ClickHouse refuses for good out of the queue,
// renamed *.rows.rejected in the spool's directory for an operator to
// look at; its rows count as dropped. It still counts against MaxBytes
// until room is needed: then the oldest set-aside segments go first.
func (s *Spool) SetAside(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == seq {
		s.inflight = 0
	}
	i := slices.IndexFunc(s.sealed, func(g *segment) bool { return g.seq == seq })
	if i < 0 {
		return nil
	}
	if err := os.Rename(s.path(seq), s.path(seq)+rejectedExt); err != nil {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	g := s.sealed[i]
	s.dropped.Add(uint64(g.rows))
	s.total -= g.bytes
	s.sealed = slices.Delete(s.sealed, i, i+1)
	s.rejected = append(s.rejected, g)
	slices.SortFunc(s.rejected, func(a, b *segment) int { return cmpUint(a.seq, b.seq) })
	s.rejectedBytes += g.bytes
	return nil
}

// Pending is how many rows and bytes wait in the spool.
func (s *Spool) Pending() (rows int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.sealed {
		rows += g.rows
	}
	if s.active != nil {
		rows += s.active.rows
	}
	return rows, s.total
}

// Dropped is how many rows were dropped because the spool was full (or
// ClickHouse refused them for good) since it was opened.
func (s *Spool) Dropped() uint64 { return s.dropped.Load() }

// RejectedDeleted is how many set-aside segments were deleted to keep the
// spool within MaxBytes since it was opened.
func (s *Spool) RejectedDeleted() uint64 { return s.rejectedDeleted.Load() }

// Corrupt is how many corrupted or torn lines reading skipped since the
// spool was opened.
func (s *Spool) Corrupt() uint64 { return s.corrupt.Load() }

// Close closes the active segment; what it holds is delivered after the
// next OpenSpool.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seal()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	return nil
}
