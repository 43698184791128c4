package pgtest

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Standalone is a Postgres server started outside a test binary (by the
// benchmark, bench/): the same server NewDatabase uses, owned by the
// caller, who must Stop it.
type Standalone struct{ s *server }

// ErrMissing is StartStandalone's error when Postgres is not installed.
var ErrMissing = errors.New("postgres is missing")

// StartStandalone starts a Postgres server as NewDatabase does (unix socket
// only, in a temporary directory; as the postgres user when root). A
// missing Postgres is an ErrMissing saying what to install.
func StartStandalone() (*Standalone, error) {
	s, missing, err := start()
	if missing != "" {
		return nil, fmt.Errorf("%s: %w", missing, ErrMissing)
	}
	if err != nil {
		return nil, err
	}
	return &Standalone{s: s}, nil
}

// NewDatabase creates an empty database called name (letters, digits and
// underscores) and returns its URL.
func (p *Standalone) NewDatabase(name string) (string, error) {
	for _, r := range name {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return "", fmt.Errorf("pgtest: database name %q: use lower-case letters, digits and underscores", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.s.admin.ExecContext(ctx, `CREATE DATABASE `+name+` TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'`); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return p.s.url(name), nil
}

// PID is the postmaster's process id.
func (p *Standalone) PID() int { return p.s.cmd.Process.Pid }

// Stop shuts the server down and removes its directory.
func (p *Standalone) Stop() { p.s.stop() }
