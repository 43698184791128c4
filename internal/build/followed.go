package build

import (
	"context"
	"strings"

	"github.com/kiln-dev/kiln/internal/steps"
)

// Steps of a followed build (Config.Followed) come from two sources: the
// builder, whose Control.Status kiln follows (internal/follow), and the
// client, which may report the same BuildKit vertices (kiln build, which
// streams its solve's status), only steps of its own (the depot CLI's
// "[depot] …"), or nothing at all (depot-go, buildctl, buildx).
//
// The rule that keeps them from counting twice:
//   - A step is one step by digest: whoever reports it, the reports merge
//     (MergeStep), so the client's copy of a vertex adds nothing new.
//   - A client step with no vertex digest (ReportTimings without a stable
//     digest, stored as "name:<name>") would be a second copy of a vertex
//     under another key: of a followed build it is kept only if it is the
//     client's own step.
//   - Log lines are the builder's: a client's line is kept only when it
//     belongs to a client's own step, by the name the report (or the
//     store) gives its digest. Lines of any other digest are the
//     builder's to store and would be there twice.
//
// A client's own steps are named "[depot] …" or "[kiln] …"; they are kept
// as steps and never counted (CountedSteps).

// IsClientStep reports whether a step is one a client or kiln adds itself
// around the build (steps.IsClientStep).
func IsClientStep(name string) bool { return steps.IsClientStep(name) }

// nameDigestPrefix marks a reported step with no digest of its own.
const nameDigestPrefix = "name:"

// clientOnly keeps of a followed build's client report what the builder
// cannot show (see the rule above).
func (s *Service) clientOnly(ctx context.Context, buildID string, steps []Step, logs []LogLine) ([]Step, []LogLine, error) {
	names := map[string]string{} // digest → step name, from this report
	var kept []Step
	for _, st := range steps {
		if st.Name != "" {
			names[st.Digest] = st.Name
		}
		if strings.HasPrefix(st.Digest, nameDigestPrefix) && !IsClientStep(st.Name) {
			continue
		}
		kept = append(kept, st)
	}
	if len(logs) == 0 {
		return kept, nil, nil
	}
	var stored map[string]string // loaded once, if a line needs it
	var keptLogs []LogLine
	for _, l := range logs {
		name, ok := names[l.Digest]
		if !ok {
			if stored == nil {
				all, err := s.store.ListSteps(ctx, buildID)
				if err != nil {
					return nil, nil, err
				}
				stored = make(map[string]string, len(all))
				for _, st := range all {
					stored[st.Digest] = st.Name
				}
			}
			name = stored[l.Digest]
		}
		if IsClientStep(name) {
			keptLogs = append(keptLogs, l)
		}
	}
	return kept, keptLogs, nil
}
