package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"
)

// DefaultAdminAddr is where the admin listener answers unless told
// otherwise: loopback, beside the API's default port.
const DefaultAdminAddr = "127.0.0.1:7421"

// AdminAddrPath is the file the admin listener's bound address is written
// to while it runs (so that "127.0.0.1:0" can be found, and an operator
// need not read the log).
func AdminAddrPath(dataDir string) string { return filepath.Join(dataDir, "admin.addr") }

// adminMux serves Go's profiles at /debug/pprof/ (goroutines, heap,
// CPU, execution traces) and, if metrics is not nil, the Prometheus
// metrics at /metrics. Nothing else: no API, no data of any project (the
// metrics' labels name no project or build: internal/metrics). It has no
// authentication, which is why it has its own listener, on loopback
// unless the operator says otherwise.
//
// The main listener serves /metrics too, but only to an organization
// token (server.go): a Prometheus elsewhere scrapes there with a bearer
// token, over kiln's TLS, without the admin listener leaving loopback
// and exposing the profiles with it.
func adminMux(metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/debug/pprof/", http.StatusFound)
	})
	return mux
}

// listenAdmin binds the admin listener (Config.AdminAddr) and writes its
// address to AdminAddrPath. An empty address turns it off. When the
// address is the default one (AdminOptional) and another process holds
// it, kiln serves without it and says so in the log; an address the
// operator chose must bind.
func (s *Server) listenAdmin() error {
	addrFile := AdminAddrPath(s.cfg.DataDir)
	os.Remove(addrFile) // a previous run's
	if s.cfg.AdminAddr == "" {
		return nil
	}
	l, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		if s.cfg.AdminOptional {
			s.cfg.Logger.Warn("admin listener (/debug/pprof, /metrics) not started: its default address is taken; choose one with --admin-addr (\"\" turns it off)",
				"addr", s.cfg.AdminAddr, "err", err)
			return nil
		}
		return fmt.Errorf("admin listener on --admin-addr %s: %w (choose another address, or \"\" to turn it off)", s.cfg.AdminAddr, err)
	}
	if err := os.WriteFile(addrFile, []byte(l.Addr().String()+"\n"), 0o600); err != nil {
		l.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		s.cfg.Logger.Warn("the admin listener (/debug/pprof and /metrics, no authentication) listens beyond loopback; keep it on a private interface",
			"addr", l.Addr().String())
	}
	s.adminListener = l
	s.admin = &http.Server{
		Handler:           adminMux(s.metricsHandler()),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          s.http.ErrorLog,
	}
	s.cfg.Logger.Info("admin listener (/debug/pprof, /metrics) serving", "addr", l.Addr().String())
	return nil
}

// metricsHandler serves the metrics; nil when the server has none.
func (s *Server) metricsHandler() http.Handler {
	if s.metrics == nil {
		return nil
	}
	return s.metrics.Handler()
}

// AdminAddr is the admin listener's bound address; nil when it is off.
func (s *Server) AdminAddr() net.Addr {
	if s.adminListener == nil {
		return nil
	}
	return s.adminListener.Addr()
}

// serveAdmin answers on the admin listener until shutdownAdmin.
func (s *Server) serveAdmin() {
	if s.admin == nil {
		return
	}
	go func() {
		if err := s.admin.Serve(s.adminListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("admin listener stopped", "err", err)
		}
	}()
}

// shutdownAdmin stops the admin listener; a profile being taken (up to
// its duration) is cut after a few seconds.
func (s *Server) shutdownAdmin() {
	if s.admin == nil {
		if s.adminListener != nil {
			s.adminListener.Close()
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.admin.Shutdown(ctx); err != nil {
		s.admin.Close()
	}
	os.Remove(AdminAddrPath(s.cfg.DataDir))
}
