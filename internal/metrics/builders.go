package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-dev/kiln/internal/builder"
)

// builderStates are kiln_builders' state values, every one reported (0
// when no builder is in it).
var builderStates = []string{"starting", "running", "idle", "stopped", "crashed"}

var (
	buildersDesc = prometheus.NewDesc("kiln_builders",
		"Builders (one buildkitd per project and platform) by state: starting; running (ready, leased to a build); idle (ready, no build); stopped (cache kept on disk); crashed.",
		[]string{"state"}, nil)
	builderConnsDesc = prometheus.NewDesc("kiln_builder_connections",
		"Open gateway connections to builders, over all builders.", nil, nil)
)

// buildersCollector reads the fleet's state at each scrape: a gauge that
// cannot drift from the fleet, and costs nothing between scrapes.
type buildersCollector struct {
	status func() []builder.Status
}

func (c *buildersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- buildersDesc
	ch <- builderConnsDesc
}

func (c *buildersCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	conns := 0
	for _, s := range c.status() {
		counts[builderState(s)]++
		conns += s.Conns
	}
	for _, st := range builderStates {
		ch <- prometheus.MustNewConstMetric(buildersDesc, prometheus.GaugeValue, float64(counts[st]), st)
	}
	ch <- prometheus.MustNewConstMetric(builderConnsDesc, prometheus.GaugeValue, float64(conns))
}

// builderState is the state label of one builder.
func builderState(s builder.Status) string {
	switch s.State {
	case builder.StateStarting:
		return "starting"
	case builder.StateReady:
		if len(s.Leases) > 0 || s.Conns > 0 {
			return "running"
		}
		return "idle"
	case builder.StateCrashed:
		return "crashed"
	default:
		return "stopped"
	}
}
