package main

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
)

// baseStages is the busybox base every Dockerfile starts from, made from
// the host's static busybox as in test/e2e: nothing is pulled.
const baseStages = `FROM scratch AS busybox
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
`

// Sizes are the workloads' dimensions (tiny in smoke mode).
type Sizes struct {
	SmallFiles    int   `json:"small_files"`     // W1 context files
	ManyFiles     int   `json:"many_files"`      // W2 many-files context
	ManyFileBytes int   `json:"many_file_bytes"` // size of each
	BigBytes      int64 `json:"big_bytes"`       // W2 one-big-file context
	ImageBytes    int64 `json:"image_bytes"`     // W4 push/pull image layer
	CompressMiB   int   `json:"compress_mib"`    // W4 gzip/zstd layer (MiB of base64 text)
	Concurrency   []int `json:"concurrency"`     // W3 N values
}

var fullSizes = Sizes{SmallFiles: 20, ManyFiles: 10000, ManyFileBytes: 2048, BigBytes: 500 << 20,
	ImageBytes: 500 << 20, CompressMiB: 24, Concurrency: []int{1, 2, 4, 8}}

var smokeSizes = Sizes{SmallFiles: 20, ManyFiles: 200, ManyFileBytes: 2048, BigBytes: 4 << 20,
	ImageBytes: 4 << 20, CompressMiB: 1, Concurrency: []int{1, 4}}

// seq makes every generated file different from every other.
var seq atomic.Uint64

// newRand is a fast deterministic byte stream, different at every call.
func newRand() *rand.ChaCha8 {
	n := seq.Add(1)
	return rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24), 'k', 'i', 'l', 'n'})
}

// writeRandom writes size random bytes to path.
func writeRandom(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, newRand(), size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeText writes size bytes of random lowercase text (compressible the
// way source code is, a little).
func writeText(path string, size int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	r := rand.New(newRand())
	b := make([]byte, size)
	for i := range b {
		if i%64 == 63 {
			b[i] = '\n'
		} else {
			b[i] = 'a' + byte(r.IntN(26))
		}
	}
	return os.WriteFile(path, b, 0o644)
}

// newContext makes dir with busybox and the Dockerfile.
func newContext(dir, dockerfile string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "busybox"), bb, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644)
}

// smallContext: W1 and W3. n text files under src/ and a RUN over them;
// NONCE (a build arg) makes the RUN run again when it changes.
func smallContext(dir string, n int, run string) error {
	df := baseStages + "\nFROM busybox\nARG NONCE\nCOPY src /src\nRUN " + run + "\n"
	if err := newContext(dir, df); err != nil {
		return err
	}
	for i := range n {
		if err := writeText(filepath.Join(dir, "src", fmt.Sprintf("f%02d.txt", i)), 1024); err != nil {
			return err
		}
	}
	return nil
}

// manyFilesContext: W2. n files of size bytes under data/, 100 to a
// directory. ignoredPct of them go under data/drop/, which .dockerignore
// excludes (0: no .dockerignore).
func manyFilesContext(dir string, n, size, ignoredPct int) error {
	if err := newContext(dir, baseStages+"\nFROM busybox\nCOPY data /data\n"); err != nil {
		return err
	}
	dropped := n * ignoredPct / 100
	for i := range n {
		sub := "keep"
		if i < dropped {
			sub = "drop"
		}
		p := filepath.Join(dir, "data", sub, fmt.Sprintf("d%03d", i/100), fmt.Sprintf("f%05d", i))
		if err := writeText(p, size); err != nil {
			return err
		}
	}
	if ignoredPct > 0 {
		return os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte("data/drop\n"), 0o644)
	}
	return nil
}

// bigFileContext: W2. One big random file and a few small ones copied in a
// separate step, so changing a small file re-sends and re-copies only it.
func bigFileContext(dir string, size int64) error {
	df := baseStages + "\nFROM busybox\nCOPY big.bin /big.bin\nCOPY small /small\n"
	if err := newContext(dir, df); err != nil {
		return err
	}
	if err := writeRandom(filepath.Join(dir, "big.bin"), size); err != nil {
		return err
	}
	for i := range 5 {
		if err := writeText(filepath.Join(dir, "small", fmt.Sprintf("f%d.txt", i)), 1024); err != nil {
			return err
		}
	}
	return nil
}

// touchFile gives path new content of the same size: one changed file.
// The new content is written to a new file renamed over the old one, so a
// hard-linked copy of the context (linkTree) keeps its own version.
func touchFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := writeText(path+".new", int(st.Size())); err != nil {
		return err
	}
	return os.Rename(path+".new", path)
}

// linkTree makes dst a copy of src whose files are hard links: a context
// per side at no cost in disk or time.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		return os.Link(p, target)
	})
}

func dirBytes(dir string, skip func(rel string) bool) (int64, int, error) {
	var total int64
	files := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if skip != nil && skip(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
			files++
		}
		return nil
	})
	return total, files, err
}

func ignoredByDockerignore(rel string) bool {
	return rel == "data/drop" || strings.HasPrefix(rel, "data/drop/")
}
