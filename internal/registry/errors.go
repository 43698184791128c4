package registry

import (
	"encoding/json"
	"net/http"
)

// ociError is an error answered in the OCI distribution error format:
// {"errors":[{"code":…,"message":…,"detail":…}]}.
type ociError struct {
	status  int
	code    string // UNAUTHORIZED, DENIED, NAME_INVALID, …
	message string
	detail  any
}

func newOCIError(status int, code, message string) *ociError {
	return &ociError{status: status, code: code, message: message}
}

func (e *ociError) Error() string { return e.code + ": " + e.message }

var (
	errNoEndpoint = newOCIError(http.StatusNotFound, "NOT_FOUND", "no such registry endpoint")
	// errDenied answers an authenticated caller that may not do what it
	// asked. It is the same whether or not the repository or its project
	// exists, so it tells nothing about other projects.
	errDenied = newOCIError(http.StatusForbidden, "DENIED", "requested access to the resource is denied")
)

// write sends e. HEAD answers carry no body (net/http drops it).
func (e *ociError) write(w http.ResponseWriter) {
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Detail  any    `json:"detail,omitempty"`
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(struct {
		Errors []item `json:"errors"`
	}{[]item{{Code: e.code, Message: e.message, Detail: e.detail}}})
}
