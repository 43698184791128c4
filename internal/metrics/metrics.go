package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
)

// Config says where the metrics read what they do not count themselves.
type Config struct {
	// Steps lists a build's stored steps (the store's ListSteps); nil: no
	// step is counted.
	Steps func(ctx context.Context, buildID string) ([]build.Step, error)
	// Builders is the fleet's state (builder.Fleet.Status), read at each
	// scrape; nil: no builder gauges.
	Builders func() []builder.Status
	// StepsDelay is how long after a build ends its steps are read: the
	// follower stores what the builder still sends for up to 10 s after
	// the end (follow.Config.Grace). 0 → 12s.
	StepsDelay time.Duration
	// StepsQueue bounds the ended builds waiting to have their steps
	// counted; past it a build's steps are not counted (and
	// kiln_build_steps_uncounted_total says so). 0 → 4096.
	StepsQueue int
	Logger     *slog.Logger // nil → discard
}

// Metrics is kiln serve's metrics. Its methods are safe for concurrent
// use; Run must be running for steps to be counted.
type Metrics struct {
	cfg Config
	log *slog.Logger
	reg *prometheus.Registry

	buildsCreated  *prometheus.CounterVec
	buildsStarted  *prometheus.CounterVec
	buildsFinished *prometheus.CounterVec
	buildDuration  *prometheus.HistogramVec
	queueWait      prometheus.Histogram
	steps          *prometheus.CounterVec
	stepsUncounted *prometheus.CounterVec
	acquire        *prometheus.HistogramVec
	registryPushed *prometheus.CounterVec
	registryPulled *prometheus.CounterVec
	uploadBytes    prometheus.Counter
	apiRequests    *prometheus.CounterVec
	apiDuration    *prometheus.HistogramVec
	storeDuration  *prometheus.HistogramVec

	// ended queues builds whose steps Run counts; never blocks a sender.
	ended chan endedBuild
	// endedOnce lets BuildEnded count each build's first end only.
	endedOnce endedOnce
}

// New makes kiln's metrics and registers them, with the Go runtime's and
// the process's collectors, on a registry of their own.
func New(cfg Config) *Metrics {
	if cfg.StepsDelay <= 0 {
		cfg.StepsDelay = 12 * time.Second
	}
	if cfg.StepsQueue <= 0 {
		cfg.StepsQueue = 4096
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{cfg: cfg, log: log, reg: prometheus.NewRegistry(), ended: make(chan endedBuild, cfg.StepsQueue)}
	m.buildsCreated = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_builds_created_total",
		Help: "Builds created: client builds (created running) and source builds (created queued)."}, []string{"kind"})
	m.buildsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_builds_started_total",
		Help: "Builds that started running: client builds at creation, source builds when they leave the queue."}, []string{"kind"})
	m.buildsFinished = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_builds_finished_total",
		Help: "Builds that ended, by final status (succeeded, failed, canceled)."}, []string{"kind", "status"})
	m.buildDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kiln_build_duration_seconds",
		Help:    "How long ended builds ran (started to finished), by final status.",
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200}}, []string{"kind", "status"})
	m.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kiln_build_queue_wait_seconds",
		Help:    "How long source builds waited in the queue (created to started).",
		Buckets: []float64{0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600}})
	m.steps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_build_steps_total",
		Help: "Steps of ended builds (the steps GetBuild counts), cached or executed; counted a few seconds after each build ends."}, []string{"kind", "result"})
	m.stepsUncounted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_build_steps_uncounted_total",
		Help: "Ended builds whose steps were not counted: the queue was full or the store did not answer."}, []string{"reason"})
	m.acquire = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kiln_builder_acquire_duration_seconds",
		Help:    "How long each builder connection request waited for the project's builder, by outcome (ready, pending: the client asks again, error).",
		Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30}}, []string{"result"})
	m.registryPushed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_registry_pushed_bytes_total",
		Help: "Bytes received by kiln's registry in pushes (blob uploads, manifests)."}, []string{"kind"})
	m.registryPulled = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_registry_pulled_bytes_total",
		Help: "Bytes sent by kiln's registry in pulls (blobs, manifests)."}, []string{"kind"})
	m.uploadBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "kiln_context_upload_bytes_total",
		Help: "Bytes of source build contexts received by kiln's upload URLs (local context storage; uploads to S3 go to the bucket)."})
	m.apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kiln_api_requests_total",
		Help: "Connect/gRPC API calls, by procedure and Connect code (ok for success)."}, []string{"procedure", "code"})
	m.apiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kiln_api_request_duration_seconds",
		Help:    "How long API calls took, by procedure; for streaming procedures, the stream's life.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}}, []string{"procedure"})
	m.storeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kiln_store_operation_duration_seconds",
		Help:    "How long database operations took: query, exec, or a whole transaction (tx).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5}}, []string{"op"})

	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.buildsCreated, m.buildsStarted, m.buildsFinished, m.buildDuration, m.queueWait, m.steps, m.stepsUncounted,
		m.acquire, m.registryPushed, m.registryPulled, m.uploadBytes, m.apiRequests, m.apiDuration, m.storeDuration)
	if cfg.Builders != nil {
		m.reg.MustRegister(&buildersCollector{status: cfg.Builders})
	}
	m.initSeries()
	return m
}

// initSeries creates the series of every fixed label value at zero, so
// that a dashboard's rate() sees them before the first event, and a
// scrape before and after an event shows a delta rather than a new series.
func (m *Metrics) initSeries() {
	for _, kind := range []build.Kind{build.KindClient, build.KindSource} {
		k := string(kind)
		m.buildsCreated.WithLabelValues(k)
		m.buildsStarted.WithLabelValues(k)
		for _, st := range []build.Status{build.Succeeded, build.Failed, build.Canceled} {
			m.buildsFinished.WithLabelValues(k, string(st))
		}
		m.steps.WithLabelValues(k, "cached")
		m.steps.WithLabelValues(k, "executed")
	}
	for _, kind := range []string{kindBlob, kindManifest} {
		m.registryPushed.WithLabelValues(kind)
		m.registryPulled.WithLabelValues(kind)
	}
	for _, r := range []string{"queue_full", "store_error"} {
		m.stepsUncounted.WithLabelValues(r)
	}
}

// Handler serves the metrics in Prometheus's text format (or OpenMetrics,
// if the scraper asks). A collector's failure is reported in the answer
// without hiding the other metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError,
		MaxRequestsInFlight: 4, Timeout: 10 * time.Second, EnableOpenMetrics: true})
}

// Gatherer reads the metrics as a scrape would, for tests.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// OnAcquire is build.Config.OnAcquire: it times builder acquisitions.
func (m *Metrics) OnAcquire(wait time.Duration, ready bool, err error) {
	result := "pending"
	switch {
	case err != nil:
		result = "error"
	case ready:
		result = "ready"
	}
	m.acquire.WithLabelValues(result).Observe(wait.Seconds())
}

// ObserveStore records one database operation (op: query, exec, tx).
func (m *Metrics) ObserveStore(op string, d time.Duration) {
	m.storeDuration.WithLabelValues(op).Observe(d.Seconds())
}

// Export is what the ClickHouse export reports of itself
// (telemetry.Exporter).
type Export interface {
	Dropped() uint64 // rows dropped: the spool was full, or ClickHouse refused them for good
	Lost() uint64    // finished builds never queued for export (its queue was full)
	Pending() int    // rows waiting in the spool for ClickHouse
}

// WatchExport adds the ClickHouse export's counters: rows dropped, builds
// lost, and rows pending in its spool.
func (m *Metrics) WatchExport(e Export) {
	m.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kiln_clickhouse_rows_dropped_total",
			Help: "Rows the ClickHouse export dropped: its spool was full (the oldest go first), or ClickHouse refused them for good."},
			func() float64 { return float64(e.Dropped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kiln_clickhouse_builds_unqueued_total",
			Help: "Finished builds the ClickHouse export never queued, its queue being full."},
			func() float64 { return float64(e.Lost()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kiln_clickhouse_rows_pending",
			Help: "Rows waiting in the ClickHouse export's on-disk spool (grows while ClickHouse is down or slow)."},
			func() float64 { return float64(e.Pending()) }),
	)
}
