package engine

import (
	"bytes"
	"encoding/csv"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/reference"
)

// Attestation types BuildKit's Dockerfile frontend produces.
const (
	attestProvenance = "provenance"
	attestSBOM       = "sbom"
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

// parseAttests turns --attest, --provenance and --sbom into the frontend's
// attest:* attributes the way buildx does. --provenance=V and --sbom=V are
// --attest=type=provenance,V and --attest=type=sbom,V; true and false
// enable or disable. kiln also takes min and max for --provenance (short
// for mode=min and mode=max).
func (r *Request) parseAttests(attests []string, provenance, sbom string) error {
	values := slices.Clone(attests)
	flags := make([]string, len(attests))
	for i, a := range attests {
		flags[i] = "--attest " + strconv.Quote(a)
	}
	if provenance != "" {
		values = append(values, shorthandAttest(attestProvenance, provenance))
		flags = append(flags, "--provenance "+strconv.Quote(provenance))
	}
	if sbom != "" {
		values = append(values, shorthandAttest(attestSBOM, sbom))
		flags = append(flags, "--sbom "+strconv.Quote(sbom))
	}

	seen := map[string]bool{}
	for i, v := range values {
		typ, disabled, attrs, err := parseAttest(flags[i], v)
		if err != nil {
			return err
		}
		if seen[typ] {
			return invalidf("%s: attestation type %q given more than once", flags[i], typ)
		}
		seen[typ] = true
		if disabled {
			continue
		}
		r.frontendAttrs["attest:"+typ] = attrs
		r.attests = append(r.attests, typ)
	}
	if !seen[attestProvenance] {
		noDefault := false
		if v, ok := os.LookupEnv(noDefaultAttestationsEnv); ok {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return invalidf("%s=%q: not a boolean", noDefaultAttestationsEnv, v)
			}
			noDefault = b
		}
		if !noDefault {
			r.frontendAttrs["attest:"+attestProvenance] = defaultProvenance
		}
	}
	return nil
}

// shorthandAttest canonicalizes a --provenance or --sbom value.
func shorthandAttest(typ, v string) string {
	if b, err := strconv.ParseBool(v); err == nil {
		return "type=" + typ + ",disabled=" + strconv.FormatBool(!b)
	}
	if typ == attestProvenance && (v == "min" || v == "max") {
		return "type=" + typ + ",mode=" + v
	}
	return "type=" + typ + "," + v
}

// parseAttest parses one attestation: type=T[,disabled=B][,key=value...].
// attrs is the frontend attribute value (the key=value fields, CSV).
func parseAttest(flag, v string) (typ string, disabled bool, attrs string, err error) {
	fields, err := parseCSV(v)
	if err != nil {
		return "", false, "", invalidWrap(err, "%s", flag)
	}
	kv := map[string]string{}
	var keys []string
	for _, f := range fields {
		k, val, ok := strings.Cut(f, "=")
		k = strings.TrimSpace(strings.ToLower(k))
		if !ok || k == "" {
			return "", false, "", invalidf("%s: field %q is not key=value", flag, f)
		}
		switch k {
		case "type":
			typ = val
		case "disabled":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return "", false, "", invalidf("%s: disabled=%q is not a boolean", flag, val)
			}
			disabled = b
		default:
			if _, dup := kv[k]; dup {
				return "", false, "", invalidf("%s: %s= given more than once", flag, k)
			}
			kv[k] = val
			keys = append(keys, k)
		}
	}
	switch typ {
	case "":
		return "", false, "", invalidf("%s: missing type= (provenance or sbom)", flag)
	case attestProvenance:
		if m, ok := kv["mode"]; ok && m != "min" && m != "max" {
			return "", false, "", invalidf("%s: unknown provenance mode %q (supported: min, max)", flag, m)
		}
	case attestSBOM:
		if g, ok := kv["generator"]; ok {
			if _, err := reference.ParseNormalizedNamed(g); err != nil {
				return "", false, "", invalidWrap(err, "%s: generator %q is not an image reference", flag, g)
			}
		}
	default:
		return "", false, "", invalidf("%s: unknown attestation type %q (supported: provenance, sbom)", flag, typ)
	}
	if disabled {
		return typ, true, "", nil
	}
	slices.Sort(keys)
	record := make([]string, len(keys))
	for i, k := range keys {
		record[i] = k + "=" + kv[k]
	}
	return typ, false, csvLine(record), nil
}

// csvLine writes one CSV record without the trailing newline.
func csvLine(record []string) string {
	if len(record) == 0 {
		return ""
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write(record) // a bytes.Buffer does not fail
	w.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}
