package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/cluster"
)

// The SQL store keeps the replicas' membership, placements and secrets.
var _ cluster.Store = (*SQL)(nil)

// Heartbeat records r alive now (the database's now), adding it if new.
func (s *SQL) Heartbeat(ctx context.Context, r cluster.Replica) error {
	_, err := s.exec(ctx, `INSERT INTO replicas (id, api_url, gateway_addr, started_at, heartbeat_at) VALUES (?, ?, ?, ?, `+s.d.nowMs+`)
		ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url, gateway_addr = excluded.gateway_addr,
		started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
		r.ID, r.APIURL, r.GatewayAddr, ms(r.StartedAt))
	return err
}

// ListReplicas lists the replicas, each with its Age by the database's
// clock.
func (s *SQL) ListReplicas(ctx context.Context) ([]cluster.Replica, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, api_url, gateway_addr, started_at, heartbeat_at, `+s.d.nowMs+` - heartbeat_at FROM replicas ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []cluster.Replica
	for rows.Next() {
		var r cluster.Replica
		var started, beat, age int64
		if err := rows.Scan(&r.ID, &r.APIURL, &r.GatewayAddr, &started, &beat, &age); err != nil {
			return nil, err
		}
		r.StartedAt, r.HeartbeatAt, r.Age = fromMs(started), fromMs(beat), time.Duration(age)*time.Millisecond
		out = append(out, r)
	}
	return out, rows.Err()
}

// RemoveReplica forgets a replica; with staleFor > 0 only if it has not
// beaten for that long (by the database's clock).
func (s *SQL) RemoveReplica(ctx context.Context, id string, staleFor time.Duration) error {
	if staleFor <= 0 {
		_, err := s.exec(ctx, `DELETE FROM replicas WHERE id = ?`, id)
		return err
	}
	_, err := s.exec(ctx, `DELETE FROM replicas WHERE id = ? AND `+s.d.nowMs+` - heartbeat_at >= ?`, id, staleFor.Milliseconds())
	return err
}

// PlaceBuilder returns the replica running the project's builder for
// platform if it beat less than timeout ago (by the database's clock),
// else records replica as its place and returns it. Concurrent callers agree: the row is locked (on
// Postgres; SQLite runs one transaction at a time), and of two first
// placements the second sees the first's row.
func (s *SQL) PlaceBuilder(ctx context.Context, projectID, platform, replica string, timeout time.Duration) (string, error) {
	var owner string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT replica FROM builder_placements WHERE project_id = ? AND platform = ?`+s.d.forUpdate,
			projectID, platform).Scan(&owner)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			owner = replica
			_, err = tx.ExecContext(ctx, `INSERT INTO builder_placements (project_id, platform, replica, placed_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (project_id, platform) DO NOTHING`, projectID, platform, replica, ms(time.Now()))
			if err == nil {
				// Another transaction may have placed it first.
				err = tx.QueryRowContext(ctx, `SELECT replica FROM builder_placements WHERE project_id = ? AND platform = ?`,
					projectID, platform).Scan(&owner)
			}
			return err
		case err != nil:
			return err
		case owner == replica:
			return nil
		}
		var age int64
		err = tx.QueryRowContext(ctx, `SELECT `+s.d.nowMs+` - heartbeat_at FROM replicas WHERE id = ?`, owner).Scan(&age)
		if err == nil && age < timeout.Milliseconds() {
			return nil // its replica lives: the builder is there
		}
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		owner = replica
		_, err = tx.ExecContext(ctx, `UPDATE builder_placements SET replica = ?, placed_at = ? WHERE project_id = ? AND platform = ?`,
			replica, ms(time.Now()), projectID, platform)
		return err
	})
	return owner, err
}

// PutSecretIfAbsent stores value under name unless one is there, and
// returns the stored value.
func (s *SQL) PutSecretIfAbsent(ctx context.Context, name, value string) (string, error) {
	if _, err := s.exec(ctx, `INSERT INTO cluster_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING`,
		name, value, ms(time.Now())); err != nil {
		return "", err
	}
	var stored string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM cluster_secrets WHERE name = ?`, name).Scan(&stored)
	return stored, err
}

// ErrLockLost is the cause of a TryLock's held context when the lock was
// lost: its connection to the database broke, so another holder may have
// it now.
var ErrLockLost = errors.New("store lock lost: its database connection broke")

// lockPing is how often a held lock's connection is checked.
const lockPing = 2 * time.Second

// TryLock takes the named lock unless another holder has it: on Postgres
// a session advisory lock on a connection of its own, held until unlock
// (or until that connection drops, so a dead replica's locks go with it);
// on SQLite, whose database one process serves, a lock in this process.
//
// held is ctx, canceled with ErrLockLost once the lock is lost (its
// connection is checked every couple of seconds): work done under the
// lock stops instead of going on beside another holder's. unlock gives
// the lock back (and cancels held).
func (s *SQL) TryLock(ctx context.Context, name string) (held context.Context, unlock func(), ok bool, err error) {
	if s.d.sessionLock == "" {
		release, ok, err := s.locks.try(name)
		if !ok || err != nil {
			return nil, nil, ok, err
		}
		held, cancel := context.WithCancelCause(ctx)
		return held, func() { cancel(context.Canceled); release() }, true, nil
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, nil, false, err
	}
	if err := conn.QueryRowContext(ctx, s.d.sessionLock, name).Scan(&ok); err != nil || !ok {
		conn.Close()
		return nil, nil, false, err
	}
	held, cancel := context.WithCancelCause(ctx)
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(lockPing)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			pctx, pcancel := context.WithTimeout(context.Background(), lockPing)
			err := conn.PingContext(pctx)
			pcancel()
			if err != nil {
				cancel(fmt.Errorf("%w (lock %q): %v", ErrLockLost, name, err))
				return
			}
		}
	}()
	var once sync.Once
	return held, func() {
		once.Do(func() {
			close(stop)
			<-watched
			cancel(context.Canceled)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var released bool
			if conn.QueryRowContext(ctx, s.d.sessionUnlock, name).Scan(&released) != nil {
				// Not back to the pool still holding the lock.
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
			conn.Close()
		})
	}, true, nil
}

// namedLocks are TryLock's locks where the database has none to share.
type namedLocks struct {
	mu   sync.Mutex
	held map[string]bool
}

func (l *namedLocks) try(name string) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[name] {
		return nil, false, nil
	}
	if l.held == nil {
		l.held = map[string]bool{}
	}
	l.held[name] = true
	return func() {
		l.mu.Lock()
		delete(l.held, name)
		l.mu.Unlock()
	}, true, nil
}
