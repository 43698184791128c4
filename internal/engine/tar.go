package engine

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/kiln-dev/kiln/internal/archive"
)

// sniffArchive looks at the start of stdin. It returns whether stdin holds
// a tar archive (plain, gzip or bzip2 compressed) rather than a Dockerfile,
// and a reader positioned at the start of stdin, for archive.Extract or the
// Dockerfile. Empty stdin is an error.
func sniffArchive(r io.Reader) (isTar bool, rd io.Reader, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		return false, nil, errors.New("stdin is empty")
	} else if err != nil {
		return false, nil, fmt.Errorf("reading stdin: %w", err)
	}
	isTar, err = archive.Sniff(br)
	if err != nil {
		return false, nil, fmt.Errorf("stdin: %w", err)
	}
	return isTar, br, nil
}

// stdinLimits bound an archive read from stdin. It is the user's own data
// on the user's machine, so the limits catch mistakes rather than attacks:
// sizes match what a directory context may hold, and there is no practical
// bound on the expansion ratio (a context may well hold a file of zeros).
func stdinLimits() archive.Limits {
	return archive.Limits{
		// Content plus tar's per-entry overhead: headers, long-name
		// records, padding.
		CompressedBytes:   maxStdinBytes + maxStdinEntries*(4<<10),
		UncompressedBytes: maxStdinBytes,
		Entries:           maxStdinEntries,
		Depth:             256,
		Ratio:             1 << 20,
	}
}
