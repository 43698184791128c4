package engine

import (
	"maps"
	"os"
	"slices"
	"strconv"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// defaultProvenance is what buildx (v0.30 through v0.38) asks for when no
// provenance flag is given: min provenance, inline only, so it is attached
// to image outputs (pushed images get an attestation manifest) but not
// written next to local or tar outputs. BuildKit's oci and docker exporters
// leave inline-only attestations out too, so a --load or type=oci archive
// holds just the image.
const defaultProvenance = "mode=min,inline-only=true"

// noDefaultAttestationsEnv turns the default provenance off, as in buildx.
const noDefaultAttestationsEnv = "BUILDX_NO_DEFAULT_ATTESTATIONS"

// setAttests turns the request's attestations into the frontend's
// attest:* attributes the way buildx does: none given means min
// provenance, inline only (unless BUILDX_NO_DEFAULT_ATTESTATIONS is set).
func (r *Request) setAttests(attests []buildreq.Attest) error {
	provenance := false
	for _, a := range attests {
		provenance = provenance || a.Type == buildreq.AttestProvenance
		if a.Disabled {
			continue
		}
		record := make([]string, 0, len(a.Attrs))
		for _, k := range slices.Sorted(maps.Keys(a.Attrs)) {
			record = append(record, k+"="+a.Attrs[k])
		}
		r.frontendAttrs["attest:"+a.Type] = buildreq.CSVLine(record)
		r.attests = append(r.attests, a.Type)
	}
	if provenance {
		return nil
	}
	if v, ok := os.LookupEnv(noDefaultAttestationsEnv); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errdefs.Invalidf("%s=%q: not a boolean", noDefaultAttestationsEnv, v)
		}
		if b {
			return nil
		}
	}
	r.frontendAttrs["attest:"+buildreq.AttestProvenance] = defaultProvenance
	return nil
}
