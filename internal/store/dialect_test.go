package store

import (
	"database/sql/driver"
	"testing"

	"github.com/kiln-dev/kiln/internal/redact"
)

func TestRebind(t *testing.T) {
	args := []driver.NamedValue{{Value: "a"}, {Value: int64(2)}, {Value: true}, {Value: nil}}
	got, err := rebind(`SELECT '?', "a?" FROM t WHERE x = ? AND y = 'it''s ?' AND z < ? AND f = ? AND g IS ?`, args)
	want := `SELECT '?', "a?" FROM t WHERE x = $1::text AND y = 'it''s ?' AND z < $2::bigint AND f = $3::bigint AND g IS $4`
	if err != nil || got != want {
		t.Errorf("rebind = %q, %v\nwant      %q", got, err, want)
	}
	if args[2].Value != int64(1) {
		t.Errorf("bool argument became %#v, want int64(1)", args[2].Value)
	}
	// A prepared statement's: no casts. Postgres's own form: unchanged.
	if got, _ := rebind(`INSERT INTO t VALUES (?, ?)`, nil); got != `INSERT INTO t VALUES ($1, $2)` {
		t.Errorf("rebind without args = %q", got)
	}
	if got, _ := rebind(`SELECT $1`, []driver.NamedValue{{Value: "x"}}); got != `SELECT $1` {
		t.Errorf("rebind of $1 = %q", got)
	}
	if _, err := rebind(`SELECT ?`, []driver.NamedValue{{Value: "x"}, {Value: "y"}}); err == nil {
		t.Error("rebind with too many arguments: no error")
	}
	// Comments are not scanned for placeholders or quotes; bytes are text.
	b := []driver.NamedValue{{Value: []byte("{}")}}
	got, err = rebind("SELECT -- the manifest's digest?\n ? /* it's? */ FROM t", b)
	if want := "SELECT -- the manifest's digest?\n $1::text /* it's? */ FROM t"; err != nil || got != want {
		t.Errorf("rebind with comments = %q, %v\nwant                %q", got, err, want)
	}
	if b[0].Value != "{}" {
		t.Errorf("a []byte argument became %#v, want the text {}", b[0].Value)
	}
	// No arguments (goose's statements): left as they are.
	if got, err := rebind("CREATE TABLE t (x TEXT) -- what?", []driver.NamedValue{}); err != nil || got != "CREATE TABLE t (x TEXT) -- what?" {
		t.Errorf("rebind without parameters = %q, %v", got, err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://kiln:s3cret@db:5432/kiln?sslmode=require": "postgres://kiln:xxxxx@db:5432/kiln?sslmode=require",
		"postgres://db/kiln?user=kiln&password=s3cret":        "postgres://db/kiln?password=xxxxx&user=kiln",
		"postgres://kiln@db/kiln":                             "postgres://kiln@db/kiln",
		"postgres://kiln:s3cret@db:bad port/kiln":             "postgres://(unparsable URL)",
		"sqlite:/var/lib/kiln":                                "sqlite:/var/lib/kiln",
	} {
		if got := redact.URL(in); got != want {
			t.Errorf("redact.URL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPGText(t *testing.T) {
	for in, want := range map[string]string{
		"plain ünïcode":    "plain ünïcode",
		"a\x00b":           "a\uFFFDb",
		"a\xff\xfeb":       "a\uFFFDb",
		"\xc3 cut\x00\xff": "\uFFFD cut\uFFFD\uFFFD",
	} {
		if got := pgText(in); got != want {
			t.Errorf("pgText(%q) = %q, want %q", in, got, want)
		}
	}
}
