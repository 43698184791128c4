package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	kilnapi "github.com/kiln-dev/kiln/internal/api/kiln"
	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/project"
)

// deniedLogInterval is how often refused OIDC tokens are summarized in the
// log: the first refusal of an interval is logged in full, the rest are
// counted into one summary line at its end.
const deniedLogInterval = time.Minute

// setupOIDC gives the authenticator the OIDC verifier of cfg.OIDC (CI jobs
// authenticating with their provider's token against trust policies) and
// writes the events of its Audit hook to the log: trust-policy matches
// each, refused tokens throttled (deniedLog). An Audit hook set before (the
// audit log) is kept and called after.
//
// The verifier fetches a per-organization issuer's keys (CircleCI's) only
// if a trust policy names the organization, so tokens naming made-up
// organizations cost one store query and no fetch.
func (s *Server) setupOIDC(authn *auth.Authenticator) error {
	cfg := s.cfg.OIDC
	if cfg.Wanted == nil && authn.Store != nil {
		cfg.Wanted = policiesName(authn.Store, cfg.CircleCIIssuerPrefix)
	}
	v, err := oidc.NewVerifier(cfg)
	if err != nil {
		return fmt.Errorf("OIDC: %w", err)
	}
	authn.OIDC = v
	logger, next := s.cfg.Logger, authn.Audit
	// A refused token writes two events: the verifier's reason
	// (oidc.denied) and the edge's refusal (denied, code unauthenticated);
	// both are throttled. Refusals of valid tokens (permission denied) need
	// a real credential and are logged each.
	oidcDenied := &deniedLog{logger: logger, msg: auth.AuditOIDCDenied, interval: deniedLogInterval}
	unauthDenied := &deniedLog{logger: logger, msg: audit.KindDenied, interval: deniedLogInterval}
	authn.Audit = func(ctx context.Context, event string, attrs ...any) {
		switch {
		case event == auth.AuditOIDCDenied:
			oidcDenied.log(ctx, attrs...)
		case event == audit.KindDenied && attr(attrs, "code") == connect.CodeUnauthenticated.String():
			unauthDenied.log(ctx, attrs...)
		default:
			logger.InfoContext(ctx, event, attrs...)
		}
		if next != nil {
			next(ctx, event, attrs...)
		}
	}
	return nil
}

// policiesName answers oidc.Config.Wanted from the store: a CircleCI
// issuer (circlePrefix + organization id) is wanted when a trust policy
// names that organization. Other providers' issuers are configured
// exactly and never asked about.
func policiesName(store interface {
	MatchTrustPolicies(ctx context.Context, provider, owner string) ([]auth.TrustPolicy, error)
}, circlePrefix string) func(context.Context, oidc.Provider, string) (bool, error) {
	return func(ctx context.Context, p oidc.Provider, iss string) (bool, error) {
		if p != oidc.CircleCI || circlePrefix == "" || !strings.HasPrefix(iss, circlePrefix) {
			return false, nil
		}
		tps, err := store.MatchTrustPolicies(ctx, string(oidc.CircleCI), strings.TrimPrefix(iss, circlePrefix))
		if err != nil {
			return false, err
		}
		return len(tps) > 0, nil
	}
}

// attr returns the value of key in slog-style key/value pairs, or "".
func attr(attrs []any, key string) string {
	for i := 0; i+1 < len(attrs); i += 2 {
		if k, _ := attrs[i].(string); k == key {
			return fmt.Sprint(attrs[i+1])
		}
	}
	return ""
}

// deniedLog writes refused tokens to the log, at most one full line
// and one summary line per interval, so a flood of forged tokens cannot
// flood the log. The summary is written by a timer at the interval's end.
type deniedLog struct {
	logger   *slog.Logger
	msg      string // the event: the full line's message, and msg+".summary"
	interval time.Duration

	mu         sync.Mutex // guards the fields below
	open       bool       // an interval is running (its first refusal was logged)
	suppressed int        // refusals not logged in this interval
	reasons    map[string]int
}

func (d *deniedLog) log(ctx context.Context, attrs ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.open {
		d.open = true
		d.logger.InfoContext(ctx, d.msg, attrs...)
		time.AfterFunc(d.interval, d.flush)
		return
	}
	d.suppressed++
	if d.reasons == nil {
		d.reasons = map[string]int{}
	}
	// The reason's kind, not the attacker-chosen value after it.
	reason, _, _ := strings.Cut(attr(attrs, "reason"), ":")
	if reason == "" {
		reason = "unknown"
	}
	if len(d.reasons) < 20 || d.reasons[reason] > 0 {
		d.reasons[reason]++
	} else {
		d.reasons["other"]++
	}
}

// flush ends an interval: a summary line if refusals were left out.
func (d *deniedLog) flush() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open = false
	if d.suppressed == 0 {
		return
	}
	attrs := []any{"refused", d.suppressed, "interval", d.interval.String()}
	for reason, n := range d.reasons {
		attrs = append(attrs, slog.Int(reason, n))
	}
	d.logger.Info(d.msg+".summary", attrs...)
	d.suppressed, d.reasons = 0, nil
}

// mountTrustPolicies serves kiln.v1.TrustPolicyService.
func (s *Server) mountTrustPolicies(mux *http.ServeMux, authn *auth.Authenticator, projects *project.Service) {
	opts := []connect.HandlerOption{s.apiInterceptors(authn), connect.WithReadMaxBytes(1 << 20)}
	kilnapi.MountTrustPolicies(mux, &kilnapi.TrustPolicyService{Projects: projects, Logger: s.cfg.Logger}, opts...)
}
