package redact

import (
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://kiln:s3cret@db:5432/kiln?sslmode=require": "postgres://kiln:xxxxx@db:5432/kiln?sslmode=require",
		"postgres://db/kiln?user=kiln&password=s3cret":        "postgres://db/kiln?password=xxxxx&user=kiln",
		"postgres://db/kiln?sslpassword=s3cret":               "postgres://db/kiln?sslpassword=xxxxx",
		"postgres://kiln@db/kiln":                             "postgres://kiln@db/kiln",
		"postgres://kiln:s3cret@db:bad port/kiln":             "postgres://(unparsable URL)",
		"host=db user=kiln password=s3cret sslmode=disable":   "host=db user=kiln password=xxxxx sslmode=disable",
		"host=db password='s3 cret' sslpassword=s3cret2":      "host=db password=xxxxx sslpassword=xxxxx",
		"http://default:s3cret@127.0.0.1:8123/?database=kiln": "http://default:xxxxx@127.0.0.1:8123/?database=kiln",
		"":                     "",
		"sqlite:/var/lib/kiln": "sqlite:/var/lib/kiln",
	} {
		got := URL(in)
		if got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("URL(%q) = %q shows the secret", in, got)
		}
	}
}
