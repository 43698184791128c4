// Package redact hides the secrets of connection strings kiln shows or
// logs (a store's location, ClickHouse's URL): one set of rules, so that a
// fix to one is a fix to all.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask is what a hidden secret reads as.
const Mask = "xxxxx"

// secretKeys are the parameters whose values are secrets, in a URL's
// query or a keyword=value connection string.
var secretKeys = []string{"password", "sslpassword"}

// keywordSecret matches password=… and sslpassword=… in a keyword=value
// string (libpq's form), quoted or not.
var keywordSecret = regexp.MustCompile(`(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)

// URL is raw with its secrets masked: a URL's password and secret query
// parameters; in a string that is not a URL, secret keyword=value pairs.
// What cannot be parsed at all reads "(unparsable URL)" behind its scheme.
func URL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		if scheme, _, ok := strings.Cut(raw, "://"); ok && !strings.ContainsAny(scheme, " =") {
			return scheme + "://(unparsable URL)"
		}
		return keywordSecret.ReplaceAllString(raw, "${1}="+Mask)
	}
	if u.Scheme == "" || u.Opaque != "" {
		return keywordSecret.ReplaceAllString(raw, "${1}="+Mask)
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	q := u.Query()
	changed := false
	for _, k := range secretKeys {
		if q.Has(k) {
			q.Set(k, Mask)
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.String()
}
