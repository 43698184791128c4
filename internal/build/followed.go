package build

import (
	"context"

	"github.com/kiln-dev/kiln/internal/steps"
)

// Steps of a followed build (Config.Followed) come from two sources: the
// builder, whose Control.Status kiln follows (internal/follow), and the
// client, which may report the same BuildKit vertices (kiln build, which
// streams its solve's status), only steps of its own (the depot CLI's
// "[depot] …"), or nothing at all (depot-go, buildctl, buildx).
//
// The rule that keeps them from counting twice: the builder is the
// authority for BuildKit's vertices. Of a followed build's client report,
// kiln keeps only the client's own steps and their log lines, by the name
// the report (or, for an update without a name, the store) gives the
// step's digest. A client's copy of a vertex is dropped, whatever its
// digest: clients may rename and re-key vertices (kiln bake prefixes each
// target's, as buildx does), and such a copy would count twice.
//
// A client's own steps are named "[depot] …" or "[kiln] …"; they are kept
// as steps and never counted (CountedSteps).

// clientOnly keeps of a followed build's client report what the builder
// cannot show: the client's own steps and their lines (see the rule above).
func (s *Service) clientOnly(ctx context.Context, buildID string, reported []Step, logs []LogLine) ([]Step, []LogLine, error) {
	names := map[string]string{} // digest → step name, from this report
	for _, st := range reported {
		if st.Name != "" {
			names[st.Digest] = st.Name
		}
	}
	var stored map[string]string // digest → name in the store, loaded once if needed
	own := func(digest string) (bool, error) {
		name, ok := names[digest]
		if !ok {
			if stored == nil {
				all, err := s.store.ListSteps(ctx, buildID)
				if err != nil {
					return false, err
				}
				stored = make(map[string]string, len(all))
				for _, st := range all {
					stored[st.Digest] = st.Name
				}
			}
			name = stored[digest]
		}
		return steps.IsClientStep(name), nil
	}
	var kept []Step
	for _, st := range reported {
		ok, err := own(st.Digest)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			kept = append(kept, st)
		}
	}
	var keptLogs []LogLine
	for _, l := range logs {
		ok, err := own(l.Digest)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			keptLogs = append(keptLogs, l)
		}
	}
	return kept, keptLogs, nil
}
