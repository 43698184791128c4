package auth

import "strings"

// Bearer is the secret of an Authorization header "Bearer <secret>" (the
// scheme in any case), or "" for any other header.
func Bearer(header string) string {
	if len(header) > 7 && strings.EqualFold(header[:7], "bearer ") {
		return strings.TrimSpace(header[7:])
	}
	return ""
}
