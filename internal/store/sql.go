package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

//go:embed migrations/*.sql
var migrations embed.FS

// SQL is the Store on a SQL database: SQLite (OpenSQLite, the embedded
// default) or Postgres (OpenPostgres). The queries are shared; what the two
// databases spell differently is the dialect's (dialect.go), and the
// placeholders are rewritten for Postgres below database/sql, so every
// query here is written once, in SQLite's "?" form.
type SQL struct {
	db *sql.DB
	d  dialect
	// dir is the database's directory (the data disk, for DiskFull's free
	// bytes); "" for a database on another machine.
	dir string
	// pending keeps build ends a full disk refused, until they are
	// written (diskfull.go).
	pending pendingEnds
	// excl is the Exclusive lock and its watch; nil without.
	excl *exclusive
	// locks are TryLock's on a database without session locks (SQLite).
	locks namedLocks
}

// Lost is closed when the store lost its Exclusive hold of the database to
// another server (after a connection drop); the holder must stop using it.
// nil (never closed) for a store opened without Exclusive.
func (s *SQL) Lost() <-chan struct{} {
	if s.excl == nil {
		return nil
	}
	return s.excl.lost
}

// SQLite is the name callers used for the store before it ran on Postgres
// too; OpenSQLite returns one.
type SQLite = SQL

// The SQL store is every domain package's store (Store embeds them).
var _ Store = (*SQL)(nil)

func newSQL(db *sql.DB, d dialect, dir string) *SQL {
	return &SQL{db: db, d: d, dir: dir, pending: pendingEnds{closed: make(chan struct{})}}
}

// migrate runs the pending migrations: the same files, so the same version
// numbers, on every dialect.
func migrate(ctx context.Context, db *sql.DB, d dialect) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	var opts []goose.ProviderOption
	if d.locker != nil {
		// Replicas starting together migrate one at a time.
		l, err := d.locker()
		if err != nil {
			return fmt.Errorf("migrations: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(l))
	}
	p, err := goose.NewProvider(d.goose, db, sub, opts...)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate database: %w", err)
	}
	return nil
}

// SchemaVersion is the highest migration applied to the database.
func (s *SQL) SchemaVersion(ctx context.Context) (int64, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return 0, err
	}
	p, err := goose.NewProvider(s.d.goose, s.db, sub)
	if err != nil {
		return 0, err
	}
	return p.GetDBVersion(ctx)
}

// Collation is how the database sorts text: "C" for SQLite's bytewise
// order; for Postgres, its LC_COLLATE.
func (s *SQL) Collation(ctx context.Context) (string, error) {
	if s.d.goose != postgresDialect.goose {
		return "C", nil
	}
	var c string
	err := s.db.QueryRowContext(ctx, `SELECT datcollate FROM pg_database WHERE datname = current_database()`).Scan(&c)
	return c, err
}

// Ping reports whether the database answers (readiness asks: a Postgres
// on another machine may not).
func (s *SQL) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close writes build ends a full disk refused, if it now can, and closes
// the database.
func (s *SQL) Close() error {
	s.closePending()
	if s.excl != nil {
		s.excl.release()
	}
	return s.db.Close()
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMs(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// notFound turns sql.ErrNoRows into the errdefs kind.
func notFound(err error, what, id string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s %q: %w", what, id, errdefs.ErrNotFound)
	}
	return err
}

// uniqueViolation turns a unique constraint's refusal into the errdefs
// kind.
func uniqueViolation(err error, what, id string) error {
	if isUniqueViolation(err) {
		return fmt.Errorf("%s %q: %w", what, id, errdefs.ErrAlreadyExists)
	}
	return err
}

func (s *SQL) CreateOrganization(ctx context.Context, o project.Organization) error {
	_, err := s.exec(ctx, `INSERT INTO organizations (id, name, created_at) VALUES (?, ?, ?)`, o.ID, o.Name, ms(o.CreatedAt))
	return uniqueViolation(err, "organization", o.ID)
}

func (s *SQL) GetOrganization(ctx context.Context, id string) (project.Organization, error) {
	var o project.Organization
	var created int64
	err := s.db.QueryRowContext(ctx, `SELECT id, name, created_at FROM organizations WHERE id = ?`, id).Scan(&o.ID, &o.Name, &created)
	o.CreatedAt = fromMs(created)
	return o, notFound(err, "organization", id)
}

func (s *SQL) ListOrganizations(ctx context.Context) ([]project.Organization, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, created_at FROM organizations ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []project.Organization
	for rows.Next() {
		var o project.Organization
		var created int64
		if err := rows.Scan(&o.ID, &o.Name, &created); err != nil {
			return nil, err
		}
		o.CreatedAt = fromMs(created)
		out = append(out, o)
	}
	return out, rows.Err()
}

const projectCols = `id, org_id, name, region_id, hardware, keep_gb, keep_days, created_at, customer_id, egress_allow`

func scanProject(sc interface{ Scan(...any) error }) (project.Project, error) {
	var p project.Project
	var created int64
	var egress string
	err := sc.Scan(&p.ID, &p.OrgID, &p.Name, &p.RegionID, &p.Hardware, &p.KeepGB, &p.KeepDays, &created, &p.CustomerID, &egress)
	p.CreatedAt = fromMs(created)
	p.EgressAllow = splitList(egress)
	return p, err
}

// joinList and splitList store a list of strings without newlines in one
// column ("" for none).
func joinList(l []string) string { return strings.Join(l, "\n") }

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func (s *SQL) CreateProject(ctx context.Context, p project.Project) error {
	_, err := s.exec(ctx, `INSERT INTO projects (`+projectCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		p.ID, p.OrgID, p.Name, p.RegionID, p.Hardware, p.KeepGB, p.KeepDays, ms(p.CreatedAt), p.CustomerID, joinList(p.EgressAllow))
	return uniqueViolation(err, "project", p.ID)
}

// GetOrCreateCustomerProject inserts p unless the organization already has
// a project for the customer; the unique index decides between racers.
func (s *SQL) GetOrCreateCustomerProject(ctx context.Context, p project.Project) (project.Project, bool, error) {
	if p.OrgID == "" || p.CustomerID == "" {
		return project.Project{}, false, fmt.Errorf("customer project needs an organization and a customer id: %w", errdefs.ErrInvalid)
	}
	res, err := s.exec(ctx, `INSERT INTO projects (`+projectCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (org_id, customer_id) WHERE customer_id <> '' DO NOTHING`,
		p.ID, p.OrgID, p.Name, p.RegionID, p.Hardware, p.KeepGB, p.KeepDays, ms(p.CreatedAt), p.CustomerID, joinList(p.EgressAllow))
	if err != nil {
		return project.Project{}, false, uniqueViolation(err, "project", p.ID)
	}
	n, _ := res.RowsAffected()
	got, err := scanProject(s.db.QueryRowContext(ctx, `SELECT `+projectCols+` FROM projects WHERE org_id = ? AND customer_id = ?`, p.OrgID, p.CustomerID))
	if err != nil {
		return project.Project{}, false, notFound(err, "customer", p.CustomerID)
	}
	return got, n == 1, nil
}

func (s *SQL) GetProject(ctx context.Context, id string) (project.Project, error) {
	p, err := scanProject(s.db.QueryRowContext(ctx, `SELECT `+projectCols+` FROM projects WHERE id = ?`, id))
	return p, notFound(err, "project", id)
}

func (s *SQL) ListProjects(ctx context.Context, orgID string) ([]project.Project, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+projectCols+` FROM projects WHERE org_id = ? ORDER BY created_at, id`, orgID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []project.Project
	for rows.Next() {
		p, err := scanProject(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

func (s *SQL) UpdateProject(ctx context.Context, p project.Project) error {
	res, err := s.exec(ctx, `UPDATE projects SET name = ?, region_id = ?, hardware = ?, keep_gb = ?, keep_days = ? WHERE id = ?`,
		p.Name, p.RegionID, p.Hardware, p.KeepGB, p.KeepDays, p.ID)
	return affected(res, err, "project", p.ID)
}

func (s *SQL) SetProjectEgressAllow(ctx context.Context, id string, cidrs []string) error {
	for _, c := range cidrs {
		if c == "" || strings.ContainsAny(c, "\n\r") {
			return fmt.Errorf("egress CIDR %q: %w", c, errdefs.ErrInvalid)
		}
	}
	res, err := s.exec(ctx, `UPDATE projects SET egress_allow = ? WHERE id = ?`, joinList(cidrs), id)
	return affected(res, err, "project", id)
}

func affected(res sql.Result, err error, what, id string) error {
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("%s %q: %w", what, id, errdefs.ErrNotFound)
	}
	return nil
}

func (s *SQL) DeleteProject(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// The project's builds first, locked: a step, log or sample
		// written for one of them meanwhile waits (buildExists) and then
		// finds it gone, rather than landing after its table was emptied.
		rows, err := tx.QueryContext(ctx, `SELECT id FROM builds WHERE project_id = ?`+s.d.forUpdate, id)
		if err != nil {
			return err
		}
		rows.Close()
		for _, q := range []string{
			`DELETE FROM build_logs WHERE build_id IN (SELECT id FROM builds WHERE project_id = ?)`,
			`DELETE FROM build_steps WHERE build_id IN (SELECT id FROM builds WHERE project_id = ?)`,
			`DELETE FROM build_shares WHERE build_id IN (SELECT id FROM builds WHERE project_id = ?)`,
			`DELETE FROM build_resource_samples WHERE build_id IN (SELECT id FROM builds WHERE project_id = ?)`,
			`DELETE FROM build_resource_events WHERE build_id IN (SELECT id FROM builds WHERE project_id = ?)`,
			`DELETE FROM builds WHERE project_id = ?`,
			`DELETE FROM tokens WHERE project_id = ?`,
			`DELETE FROM trust_policies WHERE project_id = ?`,
			`DELETE FROM registry_tags WHERE project_id = ?`,
			`DELETE FROM registry_manifests WHERE project_id = ?`,
			`DELETE FROM registry_settings WHERE project_id = ?`,
			`DELETE FROM builder_placements WHERE project_id = ?`,
			// The contexts' blobs go with the next retention sweep.
			`UPDATE build_contexts SET expires_at = 0 WHERE project_id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM projects WHERE id = ?`, id)
		return affected(res, err, "project", id)
	})
}

// lock takes the dialect's transaction lock on key (nothing on SQLite,
// whose transactions never overlap), for writers that must take turns
// where no row can be locked: numbering a build's steps or log lines.
func (s *SQL) lock(ctx context.Context, tx *sql.Tx, key string) error {
	if s.d.xactLock == "" {
		return nil
	}
	_, err := tx.ExecContext(ctx, s.d.xactLock, key)
	return err
}

// tx runs fn in a transaction, committed if fn returns nil. A full disk
// is errdefs.DiskFull, whichever statement met it.
func (s *SQL) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.diskErr(err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return s.diskErr(err)
	}
	if err := tx.Commit(); err != nil {
		// SQLite may leave the transaction open after a failed COMMIT
		// (SQLITE_FULL among others); a ROLLBACK ends it either way.
		tx.Rollback()
		return s.diskErr(err)
	}
	return nil
}

const tokenCols = `id, kind, org_id, project_id, build_id, description, secret_hash, created_at, expires_at, trust_policy_ids`

func scanToken(sc interface{ Scan(...any) error }) (auth.Token, error) {
	var t auth.Token
	var created, expires int64
	var policies string
	err := sc.Scan(&t.ID, &t.Kind, &t.OrgID, &t.ProjectID, &t.BuildID, &t.Description, &t.SecretHash, &created, &expires, &policies)
	t.CreatedAt, t.ExpiresAt, t.PolicyIDs = fromMs(created), fromMs(expires), splitIDs(policies)
	return t, err
}

// CreateToken stores t. A token with PolicyIDs is stored only if every one
// of those policies still exists, in the same statement, so a policy
// removed meanwhile (RevokeTrustPolicy) leaves no token behind:
// errdefs.ErrPermission.
func (s *SQL) CreateToken(ctx context.Context, t auth.Token) error {
	cond, condArgs := s.policiesExist(t.PolicyIDs)
	res, err := s.exec(ctx, `INSERT INTO tokens (`+tokenCols+`) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE `+cond,
		append([]any{t.ID, t.Kind, t.OrgID, t.ProjectID, t.BuildID, t.Description, t.SecretHash, ms(t.CreatedAt), ms(t.ExpiresAt),
			joinIDs(t.PolicyIDs)}, condArgs...)...)
	if err != nil {
		return uniqueViolation(err, "token", t.ID)
	}
	return admitted(res)
}

func (s *SQL) GetTokenByHash(ctx context.Context, hash string) (auth.Token, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM tokens WHERE secret_hash = ?`, hash))
	return t, notFound(err, "token", "")
}

func (s *SQL) GetToken(ctx context.Context, id string) (auth.Token, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM tokens WHERE id = ?`, id))
	return t, notFound(err, "token", id)
}

func (s *SQL) ListTokens(ctx context.Context, orgID, projectID string) ([]auth.Token, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+tokenCols+` FROM tokens WHERE org_id = ? AND project_id = ? AND kind <> ? ORDER BY created_at, id`,
		orgID, projectID, auth.TokenBuild)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []auth.Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *SQL) UpdateToken(ctx context.Context, id, description string) error {
	res, err := s.exec(ctx, `UPDATE tokens SET description = ? WHERE id = ?`, description, id)
	return affected(res, err, "token", id)
}

func (s *SQL) DeleteToken(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `DELETE FROM tokens WHERE id = ?`, id)
	return affected(res, err, "token", id)
}

const buildCols = `id, project_id, org_id, status, command, options, error, platforms, created_at, started_at, finished_at, last_health_at,
	kind, spec, secrets, image_refs, image_digest, created_by, trust_policy_ids, until_at, git_commit, replica`

func scanBuild(sc interface{ Scan(...any) error }) (build.Build, error) {
	var b build.Build
	var created, started, finished, health, until int64
	var refs, policies string
	var commit sql.NullString
	err := sc.Scan(&b.ID, &b.ProjectID, &b.OrgID, &b.Status, &b.Command, &b.Options, &b.Error, &b.Platforms, &created, &started, &finished, &health,
		&b.Kind, &b.Spec, &b.Secrets, &refs, &b.ImageDigest, &b.CreatedBy, &policies, &until, &commit, &b.Replica)
	b.GitCommit = commit.String
	b.CreatedAt, b.StartedAt, b.FinishedAt, b.LastHealthAt = fromMs(created), fromMs(started), fromMs(finished), fromMs(health)
	b.PolicyIDs, b.Until = splitIDs(policies), fromMs(until)
	if refs != "" {
		b.ImageRefs = strings.Split(refs, "\n")
	}
	return b, err
}

func buildKind(k build.Kind) build.Kind {
	if k == "" {
		return build.KindClient
	}
	return k
}

// CreateBuild stores b; like CreateToken, a build with PolicyIDs only if
// those policies all still exist (errdefs.ErrPermission otherwise).
func (s *SQL) CreateBuild(ctx context.Context, b build.Build) error {
	cond, condArgs := s.policiesExist(b.PolicyIDs)
	res, err := s.exec(ctx, `INSERT INTO builds (`+buildCols+`) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE `+cond,
		append([]any{b.ID, b.ProjectID, b.OrgID, b.Status, b.Command, b.Options, b.Error, b.Platforms, ms(b.CreatedAt), ms(b.StartedAt), ms(b.FinishedAt), ms(b.LastHealthAt),
			buildKind(b.Kind), b.Spec, b.Secrets, strings.Join(b.ImageRefs, "\n"), b.ImageDigest, b.CreatedBy, joinIDs(b.PolicyIDs), ms(b.Until), nullable(b.GitCommit), b.Replica}, condArgs...)...)
	if err != nil {
		return uniqueViolation(err, "build", b.ID)
	}
	return admitted(res)
}

func (s *SQL) GetBuild(ctx context.Context, id string) (build.Build, error) {
	b, err := scanBuild(s.db.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE id = ?`, id))
	if err != nil {
		return b, notFound(err, "build", id)
	}
	s.overlay(&b)
	return b, nil
}

func (s *SQL) queryBuilds(ctx context.Context, q string, args ...any) ([]build.Build, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []build.Build
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return nil, err
		}
		s.overlay(&b)
		out = append(out, b)
	}
	return out, rows.Err()
}

func (s *SQL) ListBuilds(ctx context.Context, projectID string, before time.Time, limit int) ([]build.Build, error) {
	if before.IsZero() {
		before = time.Now().Add(time.Hour)
	}
	return s.queryBuilds(ctx, `SELECT `+buildCols+` FROM builds WHERE project_id = ? AND created_at < ? ORDER BY created_at DESC, id DESC LIMIT ?`,
		projectID, ms(before), limit)
}

func (s *SQL) ListBuildsByStatus(ctx context.Context, status build.Status) ([]build.Build, error) {
	bs, err := s.queryBuilds(ctx, `SELECT `+buildCols+` FROM builds WHERE status = ? ORDER BY created_at, id`, status)
	// A build whose end is kept (diskfull.go) is no longer in status.
	return slices.DeleteFunc(bs, func(b build.Build) bool { return b.Status != status }), err
}

// BuildEnded reports whether a build has ended (auth.Store: a build token
// works only while its build runs).
func (s *SQL) BuildEnded(ctx context.Context, id string) (bool, error) {
	b, err := s.GetBuild(ctx, id)
	if err != nil {
		return false, err
	}
	return b.Terminal(), nil
}

// UpdateBuild changes a build in a transaction. An end (fn moved the
// build to a terminal status) that a full disk refuses is kept and written
// when there is room, and so is a health report (fn changed only
// LastHealthAt), kept until the next write of the build (diskfull.go):
// the call succeeds and reads show the change. Any other write a full
// disk refuses is errdefs.DiskFull.
func (s *SQL) UpdateBuild(ctx context.Context, id string, fn func(*build.Build) error) (build.Build, error) {
	var b, before build.Build
	ran := false // fn ran: b and before are the build's
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		b, err = scanBuild(tx.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE id = ?`+s.d.forUpdate, id))
		if err != nil {
			return notFound(err, "build", id)
		}
		s.overlay(&b) // what a full disk kept is the build's state; this write includes it
		before = b
		if err := fn(&b); err != nil {
			return err
		}
		ran = true
		_, err = tx.ExecContext(ctx, `UPDATE builds SET status = ?, error = ?, platforms = ?, started_at = ?, finished_at = ?, last_health_at = ?,
			secrets = ?, image_refs = ?, image_digest = ?, git_commit = ?, replica = ? WHERE id = ?`,
			b.Status, b.Error, b.Platforms, ms(b.StartedAt), ms(b.FinishedAt), ms(b.LastHealthAt),
			b.Secrets, strings.Join(b.ImageRefs, "\n"), b.ImageDigest, nullable(b.GitCommit), b.Replica, id)
		return err
	})
	switch {
	case err == nil:
		s.forget(id) // written with this update
	case !ran || !errdefs.IsDiskFull(err) || before.Terminal():
	case b.Terminal() && s.keepEnd(b):
		return b, nil
	case onlyHealth(before, b) && s.keepHealth(id, b.LastHealthAt):
		return b, nil
	}
	return b, err
}

// onlyHealth reports whether after differs from before in LastHealthAt
// alone: a health report.
func onlyHealth(before, after build.Build) bool {
	return before.Status == after.Status && before.Error == after.Error && before.Platforms == after.Platforms &&
		before.StartedAt.Equal(after.StartedAt) && before.FinishedAt.Equal(after.FinishedAt) && before.Secrets == after.Secrets &&
		slices.Equal(before.ImageRefs, after.ImageRefs) && before.ImageDigest == after.ImageDigest && before.GitCommit == after.GitCommit &&
		before.Replica == after.Replica
}

// nullable is v for a nullable column: NULL when empty.
func nullable(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// PutSteps merges each step into the stored one of its digest
// (build.MergeStep), so the builder's and the client's reports of a step
// make one step whatever order they arrive in.
// buildExists reports whether build id is there, holding its row until
// the transaction ends so that DeleteProject waits for the writes of its
// steps, logs and samples (SQLite's one writer needs no lock). What is
// written for a build that is gone is dropped.
func (s *SQL) buildExists(ctx context.Context, tx *sql.Tx, id string) (bool, error) {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM builds WHERE id = ?`+s.d.forShare, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (s *SQL) PutSteps(ctx context.Context, buildID string, steps []build.Step) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if ok, err := s.buildExists(ctx, tx, buildID); !ok {
			return err
		}
		if err := s.lock(ctx, tx, "build_steps "+buildID); err != nil {
			return err
		}
		var next int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM build_steps WHERE build_id = ?`, buildID).Scan(&next); err != nil {
			return err
		}
		for _, st := range steps {
			var old build.Step
			var started, completed int64
			err := tx.QueryRowContext(ctx, `SELECT name, cached, started_at, completed_at, error FROM build_steps WHERE build_id = ? AND digest = ?`,
				buildID, st.Digest).Scan(&old.Name, &old.Cached, &started, &completed, &old.Error)
			switch {
			case err == nil:
				old.Digest, old.StartedAt, old.CompletedAt = st.Digest, fromMs(started), fromMs(completed)
				st = build.MergeStep(old, st)
				_, err = tx.ExecContext(ctx, `UPDATE build_steps SET name = ?, cached = ?, started_at = ?, completed_at = ?, error = ?
					WHERE build_id = ? AND digest = ?`, st.Name, st.Cached, ms(st.StartedAt), ms(st.CompletedAt), st.Error, buildID, st.Digest)
			case errors.Is(err, sql.ErrNoRows):
				next++
				_, err = tx.ExecContext(ctx, `INSERT INTO build_steps (build_id, digest, seq, name, cached, started_at, completed_at, error)
					VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
					buildID, st.Digest, next, st.Name, st.Cached, ms(st.StartedAt), ms(st.CompletedAt), st.Error)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *SQL) ListSteps(ctx context.Context, buildID string) ([]build.Step, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT digest, name, cached, started_at, completed_at, error FROM build_steps WHERE build_id = ? ORDER BY seq`, buildID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []build.Step
	for rows.Next() {
		var st build.Step
		var started, completed int64
		if err := rows.Scan(&st.Digest, &st.Name, &st.Cached, &started, &completed, &st.Error); err != nil {
			return nil, err
		}
		st.StartedAt, st.CompletedAt = fromMs(started), fromMs(completed)
		out = append(out, st)
	}
	return out, rows.Err()
}

func (s *SQL) AppendLogs(ctx context.Context, buildID string, lines []build.LogLine) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if ok, err := s.buildExists(ctx, tx, buildID); !ok {
			return err
		}
		if err := s.lock(ctx, tx, "build_logs "+buildID); err != nil {
			return err
		}
		var next int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM build_logs WHERE build_id = ?`, buildID).Scan(&next); err != nil {
			return err
		}
		for _, l := range lines {
			next++
			if _, err := tx.ExecContext(ctx, `INSERT INTO build_logs (build_id, digest, seq, at, message) VALUES (?, ?, ?, ?, ?)`,
				buildID, l.Digest, next, ms(l.At), l.Message); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *SQL) ListBuildLogs(ctx context.Context, buildID string, after, limit int) ([]build.LogLine, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, digest, at, message FROM build_logs WHERE build_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
		buildID, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []build.LogLine
	for rows.Next() {
		var l build.LogLine
		var at int64
		if err := rows.Scan(&l.Seq, &l.Digest, &at, &l.Message); err != nil {
			return nil, err
		}
		l.At = fromMs(at)
		out = append(out, l)
	}
	return out, rows.Err()
}

// ListLogs returns up to limit lines of one step after sequence number
// `after`, and the sequence number to pass to get the next page.
func (s *SQL) ListLogs(ctx context.Context, buildID, digest string, after, limit int) ([]build.LogLine, int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, message FROM build_logs WHERE build_id = ? AND digest = ? AND seq > ? ORDER BY seq LIMIT ?`,
		buildID, digest, after, limit)
	if err != nil {
		return nil, after, err
	}
	defer rows.Close()
	var out []build.LogLine
	last := after
	for rows.Next() {
		var l build.LogLine
		var at int64
		if err := rows.Scan(&last, &at, &l.Message); err != nil {
			return nil, after, err
		}
		l.Digest, l.At, l.Seq = digest, fromMs(at), last
		out = append(out, l)
	}
	return out, last, rows.Err()
}
