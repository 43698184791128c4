package runner

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// checkGitHost applies the builder's network policy to a git context
// up front, so that a source build for a private host is refused at
// CreateBuild with a clear error instead of failing in the queue: the
// server resolves the context's host and refuses it when any of its
// addresses is one a step could not reach (the project's egress
// allow-list opens private ranges as it does for steps; loopback never),
// unless the operator started kiln with --git-private-hosts. It runs at
// CreateBuild and again before the build starts.
//
// What enforces the policy is the builder's fetch proxy
// (builder/fetchproxy.go), which checks the address git actually
// connects to, so DNS rebinding and redirects gain nothing there.
func (r *Runner) checkGitHost(ctx context.Context, proj project.Project, raw string) error {
	if r.cfg.GitPrivateHosts {
		return nil
	}
	g, err := buildreq.ParseGitURL(raw)
	if err != nil {
		return invalid("git_url: %v", err)
	}
	host := g.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			// The resolver's own error names the server's resolver: logged,
			// not told.
			r.log.InfoContext(ctx, "git context host does not resolve", "project_id", proj.ID, "host", host, "err", err)
			return fmt.Errorf("git_url: host %q does not resolve (check the name): %w", host, errdefs.ErrInvalid)
		}
	}
	allow := build.EgressPrefixes(proj.EgressAllow)
	for _, a := range addrs {
		if builder.PrivateDestination(a, allow) {
			// Which internal address a name has is the server's to know,
			// not a tenant's: it is logged, not told.
			r.log.InfoContext(ctx, "git context host refused", "project_id", proj.ID, "host", g.Host, "address", a.Unmap())
			return fmt.Errorf("git_url: host %q resolves to a private address builds may not reach (loopback, private, link-local or this server's own); "+
				"a private range the project's egress allow-list opens is allowed (kiln projects update --egress-allow), loopback never: %w",
				g.Host, errdefs.ErrPermission)
		}
	}
	return nil
}
