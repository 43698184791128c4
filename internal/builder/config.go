package builder

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Cache GC defaults for a Spec that leaves them 0.
const (
	DefaultKeepBytes    int64         = 10 << 30
	DefaultKeepDuration time.Duration = 14 * 24 * time.Hour
)

// gcRule is one [[worker.oci.gcpolicy]] entry of buildkitd.toml (BuildKit
// v0.34 field names, unchanged since v0.26: filters, all, keepDuration, maxUsedSpace). BuildKit
// applies the rules in order at each GC run; a rule with both keepDuration and
// maxUsedSpace only deletes records older than keepDuration, and only while
// the cache is over maxUsedSpace.
type gcRule struct {
	Filters      []string
	All          bool
	KeepDuration time.Duration
	MaxUsedSpace int64
}

// gcPolicy turns the Spec's two knobs into rules shaped like BuildKit's own
// default policy, with the Spec's numbers:
//
//  1. build contexts, cache mounts and git checkouts (cheap to recreate,
//     quick to pile up on a shared builder) go after 2 days when they use
//     more than 512 MB;
//  2. anything not used for KeepDuration goes;
//  3. the cache is kept under KeepBytes, least recently used first;
//  4. if that was not enough, BuildKit's internal and frontend records are
//     deleted too.
func gcPolicy(keepBytes int64, keepDuration time.Duration) []gcRule {
	return []gcRule{
		{
			Filters:      []string{"type==source.local", "type==exec.cachemount", "type==source.git.checkout"},
			KeepDuration: min(48*time.Hour, keepDuration),
			MaxUsedSpace: min(512<<20, keepBytes),
		},
		{KeepDuration: keepDuration},
		{MaxUsedSpace: keepBytes},
		{All: true, MaxUsedSpace: keepBytes},
	}
}

// configTmpl renders buildkitd.toml. Listening addresses, TLS files, the
// state root and the platform are passed as flags instead (see args), so the
// file holds only what does not change between starts of one spec.
//
// Durations and sizes are written as strings: BuildKit parses them with
// time.ParseDuration and go-units (a bare number is bytes).
var configTmpl = template.Must(template.New("buildkitd.toml").Funcs(template.FuncMap{
	"q": strconv.Quote,
	"dur": func(d time.Duration) string {
		return strconv.Quote(d.String())
	},
	"bytes": func(n int64) string {
		return strconv.Quote(strconv.FormatInt(n, 10))
	},
}).Parse(`# Written by kiln at every start of this builder; edits are overwritten.
# Builds may not ask for network.host or security.insecure.
insecure-entitlements = []

[worker.oci]
  enabled = true
  snapshotter = "overlayfs"
  gc = true
{{- if .Net.Pod}}
  # RUN steps share the builder pod's network namespace, which its
  # NetworkPolicy filters; never the node's network.
  networkMode = "host"
{{- else}}
  # RUN steps get a network namespace each on this builder's own bridge
  # (kiln's egress policy filters it); never the host's network.
  networkMode = "bridge"
  cniBinaryPath = {{q .Net.CNIBinDir}}
  bridgeName = {{q .Net.Bridge}}
  bridgeSubnet = {{q .Net.Subnet}}
  cniPoolSize = 4
{{- end}}
{{- if .Net.CgroupParent}}
  # RUN steps run in cgroups below this builder's (its memory limit).
  defaultCgroupParent = {{q .Net.CgroupParent}}
{{- end}}
{{- range .GC}}

  [[worker.oci.gcpolicy]]
{{- if .All}}
    all = true
{{- end}}
{{- if .Filters}}
    filters = [{{range $i, $f := .Filters}}{{if $i}}, {{end}}{{q $f}}{{end}}]
{{- end}}
{{- if .KeepDuration}}
    keepDuration = {{dur .KeepDuration}}
{{- end}}
{{- if .MaxUsedSpace}}
    maxUsedSpace = {{bytes .MaxUsedSpace}}
{{- end}}
{{- end}}

[worker.containerd]
  enabled = false
{{- range .InsecureRegistries}}

# Reached over plain HTTP (kiln serve --insecure-registry).
[registry.{{q .}}]
  http = true
{{- end}}
{{- with .OwnRegistry}}{{if .Host}}

# kiln's own registry: TLS with kiln's CA, never plain HTTP.
[registry.{{q .Host}}]
  http = false
  ca = [{{range $i, $f := .CAFiles}}{{if $i}}, {{end}}{{q $f}}{{end}}]
{{- end}}{{end}}
`))

// workerSettings are a builder's own settings of its OCI worker in
// buildkitd.toml: its RUN steps' network, and the cgroup they run under.
type workerSettings struct {
	CNIBinDir, Bridge, Subnet string
	// Pod says buildkitd runs in a Kubernetes pod (internal/builder/kube):
	// RUN steps use the pod's network namespace, not a bridge of their own.
	Pod bool
	// CgroupParent is the builder's cgroup (cgroup.go); its RUN steps get
	// cgroups below it, under its memory limit. "": BuildKit's default
	// (/buildkit/<id>, outside any builder's cgroup).
	CgroupParent string
}

// renderConfig renders buildkitd.toml for spec; insecureRegistries and
// own.Host have been checked with checkRegistryHost (NewFleet does).
func renderConfig(spec Spec, insecureRegistries []string, own OwnRegistry, net workerSettings) ([]byte, error) {
	if slices.Contains(insecureRegistries, own.Host) {
		own = OwnRegistry{} // the operator's --insecure-registry wins (one TOML table per host)
	}
	var b bytes.Buffer
	err := configTmpl.Execute(&b, struct {
		GC                 []gcRule
		InsecureRegistries []string
		OwnRegistry        OwnRegistry
		Net                workerSettings
	}{gcPolicy(spec.KeepBytes, spec.KeepDuration), insecureRegistries, own, net})
	if err != nil {
		return nil, fmt.Errorf("render buildkitd.toml: %w", err)
	}
	return b.Bytes(), nil
}

// PodConfig renders buildkitd.toml for a builder in a Kubernetes pod
// (internal/builder/kube): as a local builder's, but its RUN steps use the
// pod's own network, and own.CAFiles are paths inside the pod. It checks
// the registry hosts (checkRegistryHost).
func PodConfig(spec Spec, insecureRegistries []string, own OwnRegistry) ([]byte, error) {
	for _, h := range append(slices.Clone(insecureRegistries), own.Host) {
		if h == "" {
			continue
		}
		if err := checkRegistryHost(h); err != nil {
			return nil, fmt.Errorf("registry %q: %w", h, err)
		}
	}
	return renderConfig(spec, insecureRegistries, own, workerSettings{Pod: true})
}

// checkRegistryHost accepts a registry as BuildKit's [registry."…"] keys
// name it: a host name or IP address, with an optional port, nothing else
// (no scheme, path or quoting characters), so that it cannot change the
// meaning of the TOML it is written into.
//
// Bracketed IPv6 addresses ("[::1]:5000") are refused: BuildKit's TOML
// parser cannot read a key containing ']'.
func checkRegistryHost(h string) error {
	if strings.ContainsAny(h, "[]") {
		return fmt.Errorf("bracketed IPv6 addresses cannot be configured (BuildKit's config cannot name them): %w", errdefs.ErrInvalid)
	}
	host, port := h, ""
	if strings.Count(h, ":") == 1 {
		var err error
		if host, port, err = net.SplitHostPort(h); err != nil {
			return fmt.Errorf("want host or host:port: %w", errdefs.ErrInvalid)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q: want 1-65535: %w", port, errdefs.ErrInvalid)
		}
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	if host == "" || len(host) > 253 {
		return fmt.Errorf("want host or host:port: %w", errdefs.ErrInvalid)
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return fmt.Errorf("%q is not a host name: %w", host, errdefs.ErrInvalid)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a host name: %w", host, errdefs.ErrInvalid)
			}
		}
	}
	return nil
}
