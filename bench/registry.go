package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers "filesystem"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sirupsen/logrus"
)

// The runner re-executes itself to serve distribution in a process of its
// own, as an operator would run it: the registry then does not share the
// runner's CPU accounting, GC or scheduler with the pushing client.
const (
	roleEnv        = "KILN_BENCH_ROLE"
	registryDirEnv = "KILN_BENCH_REGISTRY_DIR"
	registryAdrEnv = "KILN_BENCH_REGISTRY_ADDR"
)

// distributionConfig is distribution's example configuration (filesystem
// storage, in-memory blob descriptor cache) without auth.
const distributionConfig = `version: 0.1
log:
  level: error
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: kiln-bench
`

// serveRole serves distribution when the runner started this process as
// its registry; it reports whether it did (and then the process is done).
func serveRole() bool {
	if os.Getenv(roleEnv) != "registry" {
		return false
	}
	if err := serveDistribution(os.Getenv(registryDirEnv), os.Getenv(registryAdrEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
	return true
}

func serveDistribution(dir, addr string) error {
	cfg, err := configuration.Parse(strings.NewReader(fmt.Sprintf(distributionConfig, dir, addr)))
	if err != nil {
		return err
	}
	logrus.SetLevel(logrus.ErrorLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	app := handlers.NewApp(ctx, cfg)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// startDistribution runs distribution (filesystem storage under dir) on a
// loopback port and returns its host:port.
func startDistribution(ctx context.Context, dir string) (*proc, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o700); err != nil {
		return nil, "", err
	}
	env := append(cleanEnv(), roleEnv+"=registry", registryDirEnv+"="+filepath.Join(dir, "storage"), registryAdrEnv+"="+addr)
	p, err := startProc("distribution", filepath.Join(dir, "registry.log"), dir, env, exe)
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			res.Body.Close()
			return p, addr, nil
		}
		if !p.alive() || time.Now().After(deadline) || ctx.Err() != nil {
			p.stop(5 * time.Second)
			return nil, "", fmt.Errorf("distribution did not come up: %v\n%s", err, tailFile(filepath.Join(dir, "registry.log"), 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fileLayer is an uncompressed tar layer on disk whose digest is known, so
// a push streams it from the file without recompressing or rehashing.
type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func (l fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l fileLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l fileLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }

// writeTarLayer writes a layer holding one random file of size bytes.
func writeTarLayer(path string, size int64) (fileLayer, error) {
	f, err := os.Create(path)
	if err != nil {
		return fileLayer{}, err
	}
	defer f.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	tw := tar.NewWriter(cw)
	if err := tw.WriteHeader(&tar.Header{Name: "data.bin", Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return fileLayer{}, err
	}
	if _, err := io.CopyN(tw, newRand(), size); err != nil {
		return fileLayer{}, err
	}
	if err := tw.Close(); err != nil {
		return fileLayer{}, err
	}
	if err := f.Close(); err != nil {
		return fileLayer{}, err
	}
	return fileLayer{path: path, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}, size: cw.n}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// imageOf is an OCI image of one layer.
func imageOf(l v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	return mutate.ConfigMediaType(img, types.OCIConfigJSON), nil
}

// regTarget is one registry the runner pushes to.
type regTarget struct {
	host   string // host:port
	prefix string // repository prefix, "" or "<project>/"
	auth   authn.Authenticator
}

func (t regTarget) ref(repo, tag string) (name.Reference, error) {
	return name.ParseReference(t.host+"/"+t.prefix+repo+":"+tag, name.Insecure)
}

func (t regTarget) opts(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithAuth(t.auth), remote.WithTransport(http.DefaultTransport.(*http.Transport).Clone())}
}

func (t regTarget) push(ctx context.Context, img v1.Image, repo, tag string) (time.Duration, error) {
	ref, err := t.ref(repo, tag)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	err = remote.Write(ref, img, t.opts(ctx)...)
	return time.Since(start), err
}

// pull fetches manifest, config and every layer (digests verified).
func (t regTarget) pull(ctx context.Context, repo, tag string) (time.Duration, error) {
	ref, err := t.ref(repo, tag)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := remote.Image(ref, t.opts(ctx)...)
	if err != nil {
		return 0, err
	}
	if _, err := img.RawConfigFile(); err != nil {
		return 0, err
	}
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// kilnRegistry reports whether kiln serve answers the registry API at /v2/
// and how to reach it. Until kiln has a registry, /v2/ is a 404.
func (r *runner) kilnRegistry(ctx context.Context, k *kilnServer, project string) (regTarget, string) {
	req, _ := http.NewRequestWithContext(ctx, "GET", k.URL+"/v2/", nil)
	res, err := k.http.Do(req)
	if err != nil {
		return regTarget{}, "registry not available: " + err.Error()
	}
	res.Body.Close()
	if res.Header.Get("Docker-Distribution-API-Version") == "" && res.StatusCode != http.StatusOK && res.StatusCode != http.StatusUnauthorized {
		return regTarget{}, fmt.Sprintf("registry not available: GET /v2/ answers %s", res.Status)
	}
	return regTarget{host: k.Addr, prefix: project + "/", auth: &authn.Basic{Username: "x-token", Password: k.Token}}, ""
}

// writeDockerAuth makes k's CLI runs send x-token credentials for host.
func writeDockerAuth(k *kilnServer, host string) error {
	cfg := map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte("x-token:" + k.Token))}}}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(k.home, ".docker", "config.json"), b, 0o600)
}

// W4: pushing and pulling an image of one big layer, against distribution
// used directly and kiln's registry; re-pushing it (every blob already
// there); and BuildKit exporting a fresh layer with gzip and with zstd and
// pushing it.
func (r *runner) w4(ctx context.Context) error {
	dir := filepath.Join(r.tmp, "w4")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	regDir := filepath.Join(r.state, "distribution")
	reg, addr, err := startDistribution(ctx, regDir)
	if err != nil {
		return err
	}
	r.onCleanup(func() { reg.stop(10 * time.Second) })
	direct := regTarget{host: addr, auth: authn.Anonymous}
	kilnReg, pending := r.kilnRegistry(ctx, r.kiln, r.project)
	if pending != "" {
		r.logf("  kiln: %s", pending)
	}
	target := func(s side) regTarget {
		if s == sideBase {
			return direct
		}
		return kilnReg
	}
	// sides lists who is measured: kiln only when its registry is there.
	sides := func(i int) []side {
		if pending != "" {
			return []side{sideBase}
		}
		return order(i)
	}

	r.logf("  writing a %d MB layer", r.sizes.ImageBytes>>20)
	layer, err := writeTarLayer(filepath.Join(dir, "layer.tar"), r.sizes.ImageBytes)
	if err != nil {
		return err
	}
	img, err := imageOf(layer)
	if err != nil {
		return err
	}
	mb := float64(layer.size) / 1e6
	label := fmt.Sprintf("%d MB image", r.sizes.ImageBytes>>20)
	push := newPair("W4.push", "W4 push "+label, "MB/s")
	pull := newPair("W4.pull", "W4 pull "+label, "MB/s")
	repush := newPair("W4.repush", "W4 re-push under a new tag, every blob present", "ms")
	for _, p := range []*pair{push, pull} {
		p.HigherIsBetter = true
	}
	for _, p := range []*pair{push, pull, repush} {
		p.Pending = pending
		p.Note = "baseline: distribution v3 (filesystem storage) used directly; client: go-containerregistry, one uncompressed layer."
	}
	i := 0
	var runErr error
	for ; i < r.cfg.runs && r.more(ctx, i); i++ {
		for _, s := range sides(i) {
			t := target(s)
			// A new repository each run: the registry receives every byte.
			repo := fmt.Sprintf("bench/push%d", i)
			d, err := t.push(ctx, img, repo, "v1")
			if err != nil {
				runErr = fmt.Errorf("push (%s): %w", s, err)
				break
			}
			push.add(s, mb/d.Seconds())
			if d, err = t.pull(ctx, repo, "v1"); err != nil {
				runErr = fmt.Errorf("pull (%s): %w", s, err)
				break
			}
			pull.add(s, mb/d.Seconds())
			// Under a new tag: the client finds every blob present (HEAD)
			// and puts the manifest; the same tag would end at the
			// manifest HEAD.
			if d, err = t.push(ctx, img, repo, "v2"); err != nil {
				runErr = fmt.Errorf("re-push (%s): %w", s, err)
				break
			}
			repush.add(s, ms(d))
		}
		if runErr != nil {
			break
		}
	}
	for _, p := range []*pair{push, pull, repush} {
		r.truncated(p, i)
		r.record(p)
	}
	if runErr != nil {
		return runErr
	}
	err = r.w4Compression(ctx, direct, kilnReg, pending)
	// The state lives in memory (a tmpfs): what W4 pushed and built goes
	// before W2 fills it again.
	reg.stop(10 * time.Second)
	_ = os.RemoveAll(regDir)
	_ = os.Remove(layer.path)
	for _, s := range []side{sideBase, sideKiln} {
		if perr := r.pruneAll(ctx, s); perr != nil && err == nil {
			err = fmt.Errorf("prune after W4 (%s): %w", s, perr)
		}
	}
	return err
}

// w4Compression: a build whose last layer is fresh every run (NONCE),
// exported with gzip or zstd and pushed by the builder.
func (r *runner) w4Compression(ctx context.Context, direct, kilnReg regTarget, pending string) error {
	cdir := filepath.Join(r.tmp, "ctx", "w4")
	run := fmt.Sprintf(`echo "$NONCE" > /nonce && dd if=/dev/urandom bs=1M count=%d 2>/dev/null | base64 > /data`, r.sizes.CompressMiB)
	if err := smallContext(cdir, 2, run); err != nil {
		return err
	}
	if pending == "" {
		if err := writeDockerAuth(r.kiln, kilnReg.host); err != nil {
			return err
		}
	}
	for _, comp := range []string{"gzip", "zstd"} {
		p := newPair("W4.build."+comp, fmt.Sprintf("W4 build + push, %d MiB text layer, %s", r.sizes.CompressMiB*4/3, comp), "s")
		p.Pending = pending
		p.Note = "BuildKit compresses the fresh layer and pushes it: baseline buildctl → distribution, kiln build → kiln's registry."
		i := 0
		var runErr error
		for ; i < r.cfg.runs && r.more(ctx, i); i++ {
			sides := order(i)
			if pending != "" {
				sides = []side{sideBase}
			}
			for _, s := range sides {
				t := direct
				if s == sideKiln {
					t = kilnReg
				}
				out := fmt.Sprintf("type=image,name=%s/%sbench/%s:%d,push=true,compression=%s,force-compression=true,oci-mediatypes=true",
					t.host, t.prefix, comp, i, comp)
				spec := buildSpec{Context: cdir, Output: out, BuildArgs: map[string]string{"NONCE": fmt.Sprintf("%s-%d-%s-%d", comp, i, s, time.Now().UnixNano())}}
				d, err := r.build(ctx, s, r.project, spec)
				if err != nil {
					runErr = fmt.Errorf("%s (%s): %w", p.Name, s, err)
					break
				}
				p.add(s, d.Seconds())
			}
			if runErr != nil {
				break
			}
		}
		r.truncated(p, i)
		r.record(p)
		if runErr != nil {
			return runErr
		}
	}
	return nil
}
