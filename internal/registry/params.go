package registry

import (
	"mime"
	"net/http"
)

// What distribution reads besides the path, and where from (v3.1.2,
// registry/handlers):
//
//	blob upload start    mount, from          r.FormValue
//	blob upload finish   digest               r.FormValue
//	upload URLs          _state               r.FormValue
//	tags list            n, last              r.URL.Query()
//	catalog, referrers   served by kiln       r.URL.Query()
//
// r.FormValue parses the body too when it is a form
// (application/x-www-form-urlencoded on POST, PUT and PATCH;
// multipart/form-data on any method), and a body value wins over the
// query's. kiln authorizes mounts, and pins digests against the collector,
// on the query; so a request whose body distribution would read as a form
// is refused before anything else looks at it. What is left for
// distribution to read is the query kiln checked. No registry client sends
// a form: pushes send their blobs as application/octet-stream.
//
// Headers that matter (X-Forwarded-Host and Forwarded, which distribution
// would put in Location) do not: the app is configured for relative URLs.

// errFormBody answers a request with a form body.
var errFormBody = newOCIError(http.StatusUnsupportedMediaType, "UNSUPPORTED",
	"the registry takes its parameters (mount, from, digest, …) in the URL query only: a form-encoded body (application/x-www-form-urlencoded or multipart/form-data) is refused")

// formBody reports whether distribution's r.FormValue would read req's
// body as a form. It decides as net/http does: by the media type of the
// first Content-Type header; one that does not parse is not read as a form
// by net/http, and not refused here.
func formBody(req *http.Request) bool {
	ct := req.Header.Get("Content-Type")
	if ct == "" {
		return false // net/http takes it as application/octet-stream
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data"
}
