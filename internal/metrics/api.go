package metrics

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
)

// API is a Connect interceptor that counts and times every call by
// procedure and code. The procedure is the one kiln registered that
// answered (connect routes nothing else to interceptors), so the label's
// values are bounded by kiln's API, whatever paths clients send. It goes
// first (outermost), so it times authentication too and sees the code
// the client receives.
func (m *Metrics) API() connect.Interceptor { return apiInterceptor{m} }

type apiInterceptor struct{ m *Metrics }

func (i apiInterceptor) observe(procedure string, start time.Time, err error) {
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
		var ce *connect.Error
		if !errors.As(err, &ce) && errors.Is(err, context.Canceled) {
			code = connect.CodeCanceled.String()
		}
	}
	i.m.apiRequests.WithLabelValues(procedure, code).Inc()
	i.m.apiDuration.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
}

// APIRefused counts a call refused before it reached Connect (the
// server's guard refuses a call without a valid token before reading its
// body): procedure is a procedure kiln serves, or one fixed placeholder
// for any other path, never the client's string.
func (m *Metrics) APIRefused(procedure string, err error) {
	m.apiRequests.WithLabelValues(procedure, connect.CodeOf(err).String()).Inc()
}

func (i apiInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		res, err := next(ctx, req)
		i.observe(req.Spec().Procedure, start, err)
		return res, err
	}
}

func (i apiInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i apiInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		i.observe(conn.Spec().Procedure, start, err)
		return err
	}
}
