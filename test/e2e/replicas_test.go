package e2e

// Several control-plane replicas (issue 18): two `kiln serve` processes on
// one Postgres and one S3 server (versitygw), as an operator runs them
// behind a load balancer. Each replica has its own data directory, its own
// builders (local driver) in its own subnet pool, and the operator's
// cluster key; the tests play the load balancer by choosing the replica
// each call goes to, and check what a user would: builds through either
// replica, a build watched live on a replica that does not run it, a
// queue of source builds run exactly once, a replica's death mid-build,
// and the registry in S3 through both.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/opencontainers/go-digest"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/blob/s3test"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
)

// The bounds internal/cluster documents: a replica beats every 2 s and is
// dead after 15 s of silence; one of the survivors then fails or takes
// over its builds.
const (
	replicaTimeout   = cluster.DefaultTimeout
	replicaHeartbeat = cluster.DefaultInterval
	// deathBound is how long after a kill -9 every build the dead replica
	// held must be settled: the timeout, one beat, and slack for a 2-core
	// machine shared with other work (the reaping replica's next pass, a
	// store round trip, the client noticing its connection is gone).
	deathBound = replicaTimeout + replicaHeartbeat + 20*time.Second
)

// replicaSet is two kiln serve replicas sharing one store and one bucket.
type replicaSet struct {
	r   []*server // r[0] is "r1", which bootstrapped the organization; r[1] is "r2"
	ids []string  // their --replica-id
	pg  string    // the shared store's URL
	gw  *s3test.Server
	st  *store.SQL // the test's own view of the shared store
	key string     // the cluster key file
}

// startReplicas starts r1, waits until it answers (it creates the schema
// and the organization, and writes the admin token), then r2 with the same
// store, bucket and cluster key. Both are stopped when the test ends (r2
// first), and then no build that held a builder may be left running in
// the store; then versitygw stops.
func startReplicas(t *testing.T) *replicaSet {
	t.Helper()
	gw := s3test.Start(t)
	rs := &replicaSet{pg: pgtest.NewDatabase(t), gw: gw, ids: []string{"r1", "r2"}}
	t.Cleanup(func() { // after both replicas stopped (cleanups run last first)
		if rs.st == nil {
			return
		}
		defer rs.st.Close()
		rs.checkEnded(t)
	})
	rs.key = filepath.Join(t.TempDir(), "cluster.key")
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rs.key, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The store's URL in the environment, not on the command line (it
	// may hold a password); S3 keys for the registry (AWS_*) and for
	// uploaded contexts (KILN_S3_*).
	env := append(withS3Env(gw), "KILN_STORE="+rs.pg, "AWS_ACCESS_KEY_ID="+gw.AccessKey, "AWS_SECRET_ACCESS_KEY="+gw.SecretKey)
	for i, id := range rs.ids {
		s, err := newServer(env, nil, ownPool)
		if err != nil {
			t.Fatal(err)
		}
		s.args = append([]string{
			"--cluster-key-file", rs.key, "--replica-id", id, "--advertise-url", s.URL,
			"--registry-s3-bucket", gw.Bucket, "--registry-s3-endpoint", gw.Endpoint, "--registry-s3-region", gw.Region,
			"--contexts-s3-bucket", gw.Bucket, "--contexts-s3-endpoint", gw.Endpoint, "--contexts-s3-region", gw.Region,
			"--contexts-s3-prefix", "contexts/",
		}, s.args...)
		t.Cleanup(func() {
			s.stop(t)
			if t.Failed() {
				b, _ := os.ReadFile(s.log)
				t.Logf("kiln serve replica %s log:\n%s", id, tail(string(b), 12000))
			}
			s.remove()
		})
		s.start(t)
		if i == 0 {
			if err := s.readToken(); err != nil {
				t.Fatalf("replica r1: %v", err)
			}
		} else {
			// Only the replica that bootstrapped the organization writes
			// the admin token: the operator copies it.
			s.Token = rs.r[0].Token
		}
		rs.r = append(rs.r, s)
	}
	st, err := store.Open(t.Context(), rs.pg, "")
	if err != nil {
		t.Fatalf("open the replicas' store: %v", err)
	}
	rs.st = st
	rs.waitMembers(t)
	return rs
}

// waitMembers waits until the store lists both replicas as members.
func (rs *replicaSet) waitMembers(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, "both replicas announced in the store", func() bool {
		live, err := rs.st.ListReplicas(t.Context())
		n := 0
		for _, r := range live {
			if slices.Contains(rs.ids, r.ID) {
				n++
			}
		}
		return err == nil && n == len(rs.ids)
	})
}

// checkEnded fails t if the store, read after every replica stopped,
// still records a build running that held a builder: as for one server
// (server.checkEnded), every build ends with a status kiln can explain.
func (rs *replicaSet) checkEnded(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	running, err := rs.st.ListBuildsByStatus(ctx, build.Running)
	if err != nil {
		t.Errorf("read the builds the replicas left: %v", err)
	}
	var left []string
	for _, b := range running {
		if b.Platforms != "" {
			left = append(left, fmt.Sprintf("%s (%s build of project %s on %q)", b.ID, b.Kind, b.ProjectID, b.Replica))
		}
	}
	if len(left) > 0 {
		t.Errorf("the replicas stopped with builds still recorded running:\n  %s", strings.Join(left, "\n  "))
	}
}

// other is the index of the replica that is not i.
func other(i int) int { return 1 - i }

// index is the index of the replica with id; -1 for none.
func (rs *replicaSet) index(id string) int { return slices.Index(rs.ids, id) }

// kill ends replica i with SIGKILL (its builders die with it), as a
// machine's crash does; restart brings it back on the same data.
func (rs *replicaSet) kill(t *testing.T, i int) {
	t.Helper()
	t.Logf("kill -9 replica %s (pid %d)", rs.ids[i], rs.r[i].pid())
	rs.r[i].kill9(t)
}

func (rs *replicaSet) restart(t *testing.T, i int) {
	t.Helper()
	rs.r[i].start(t)
}

// record is the store's record of a build (status, replica…).
func (rs *replicaSet) record(t *testing.T, id string) build.Build {
	t.Helper()
	b, err := rs.st.GetBuild(t.Context(), id)
	if err != nil {
		t.Fatalf("the store's record of build %s: %v", id, err)
	}
	return b
}

// builderOn reports whether replica i runs a builder (a buildkitd
// process) for project.
func (rs *replicaSet) builderOn(t *testing.T, i int, project string) bool {
	t.Helper()
	for _, b := range rs.r[i].builders(t) {
		if b.ProjectID == project && b.PID != 0 {
			return true
		}
	}
	return false
}

// buildersOf lists the replicas running a builder for project.
func (rs *replicaSet) buildersOf(t *testing.T, project string) []string {
	t.Helper()
	var on []string
	for i := range rs.r {
		if rs.builderOn(t, i, project) {
			on = append(on, rs.ids[i])
		}
	}
	return on
}

func sourceEnded(s kilnv1.BuildStatus) bool {
	return s == kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED || s == kilnv1.BuildStatus_BUILD_STATUS_FAILED || s == kilnv1.BuildStatus_BUILD_STATUS_CANCELED
}

// Builds through either replica: the same project built through r1, then
// through r2. Both succeed; the second is fully cached, because it runs on
// the one builder of the project, on the replica that placed it.
func TestReplicasBuildThroughEither(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t)
	proj := rs.r[0].createProject(t, "either")
	dir := writeContext(t, map[string]string{
		"Dockerfile": baseStages + "FROM busybox\nCOPY app.txt /app.txt\nRUN cat /app.txt > /copy && echo built\n",
		"app.txt":    "the app",
	})
	args := []string{"build", "--project", proj, "--progress", "rawjson", "."}
	first := rs.r[0].mustKiln(t, dir, args...)
	if steps := dockerfileSteps(t, first.Stderr); cachedCount(steps) == len(steps) {
		t.Fatalf("the first build of a new project was fully cached")
	}
	on := rs.buildersOf(t, proj)
	if len(on) != 1 {
		t.Fatalf("after one build, replicas running a builder for the project: %v; want exactly one", on)
	}
	t.Logf("the project's builder runs on %s", on[0])

	second := rs.r[1].kiln(t, dir, nil, args...)
	if second.Err != nil {
		t.Fatalf("kiln build through r2 of a project built through r1: %v\n%s", second.Err, tail(second.Stderr, 6000))
	}
	steps := dockerfileSteps(t, second.Stderr)
	if n := cachedCount(steps); n != len(steps) {
		var run []string
		for name, v := range steps {
			if !v.Cached {
				run = append(run, name)
			}
		}
		t.Errorf("the build through r2 ran %v again (%d of %d steps cached): it did not use the project's builder on %s", run, n, len(steps), on[0])
	}
	if again := rs.buildersOf(t, proj); !slices.Equal(again, on) {
		t.Errorf("after the build through r2, replicas running a builder for the project: %v; want only %v", again, on)
	}
	// Either replica lists both builds.
	for i := range rs.r {
		if n := len(rs.r[i].listBuilds(t, proj)); n != 2 {
			t.Errorf("%s lists %d builds of the project, want 2", rs.ids[i], n)
		}
	}
}

// listBuilds is ListBuilds of project through s.
func (s *server) listBuilds(t *testing.T, project string) []string {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds through %s: %v", s.URL, err)
	}
	var ids []string
	for _, b := range res.Msg.Builds {
		ids = append(ids, b.Id)
	}
	return ids
}

// A source build created on r1 and watched on the other replica: its log
// lines arrive there while it runs, and the watcher sees it end.
func TestReplicasWatchAcross(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t)
	data := contextArchive(t, map[string]string{
		"Dockerfile": baseStages + "FROM busybox\nRUN for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 1; done\n",
	})
	b := rs.r[0].createSource(t, rs.r[0].Token, customer("watched"), data)
	// The watcher is the replica that does not run the build: wait until
	// one claimed it.
	var runner string
	eventually(t, 2*time.Minute, "a replica to start the build", func() bool {
		runner = rs.record(t, b.BuildId).Replica
		return runner != ""
	})
	ri := rs.index(runner)
	if ri < 0 {
		t.Fatalf("build %s is recorded running on %q, which is no replica of this test", b.BuildId, runner)
	}
	w := rs.r[other(ri)]
	t.Logf("build %s created on r1 runs on %s; watched on %s", b.BuildId, runner, rs.ids[other(ri)])

	// The CLI follows it through the watching replica too.
	cli := w.kilnAsync(t, t.TempDir(), nil, "builds", "logs", "-f", b.BuildId)

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	stream, err := w.sourceAPI().WatchBuild(ctx, bearer(&kilnv1.WatchBuildRequest{BuildId: b.BuildId}, w.Token))
	if err != nil {
		t.Fatalf("WatchBuild on %s: %v", rs.ids[other(ri)], err)
	}
	ticks := map[string]time.Time{} // tick-N → when its line arrived
	var final *kilnv1.Build
	var finalAt time.Time
	var seqs []int64
	for stream.Receive() {
		switch e := stream.Msg().Event.(type) {
		case *kilnv1.WatchBuildResponse_Log:
			seqs = append(seqs, e.Log.Seq)
			for _, f := range strings.Fields(e.Log.Message) {
				if strings.HasPrefix(f, "tick-") {
					if _, ok := ticks[f]; !ok {
						ticks[f] = time.Now()
					}
				}
			}
		case *kilnv1.WatchBuildResponse_Build:
			if sourceEnded(e.Build.Status) {
				final, finalAt = e.Build, time.Now()
			}
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("WatchBuild on %s ended with %v", rs.ids[other(ri)], err)
	}
	if final == nil {
		t.Fatalf("the watcher on %s never saw the build end (ticks seen: %d)", rs.ids[other(ri)], len(ticks))
	}
	if final.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Fatalf("build ended %v: %s", final.Status, final.Error)
	}
	for i := 1; i <= 8; i++ {
		if _, ok := ticks[fmt.Sprintf("tick-%d", i)]; !ok {
			t.Fatalf("the watcher on %s saw ticks %v; tick-%d is missing", rs.ids[other(ri)], keys(ticks), i)
		}
	}
	// Live: the first line arrived while the build still ran (the RUN
	// takes 8 s), not in one batch at its end.
	if lead := finalAt.Sub(ticks["tick-1"]); lead < 4*time.Second {
		t.Errorf("tick-1 arrived only %s before the end on the watching replica: lines were not streamed live", lead.Round(time.Millisecond))
	}
	if spread := ticks["tick-8"].Sub(ticks["tick-1"]); spread < 4*time.Second {
		t.Errorf("tick-1 … tick-8 (printed over 7 s) arrived within %s on the watching replica: not live", spread.Round(time.Millisecond))
	}
	for i, seq := range seqs {
		if seq != int64(i+1) {
			t.Fatalf("log line %d has seq %d on the watching replica: lines were lost or repeated", i, seq)
		}
	}
	res := cli.wait(t, time.Minute)
	if res.Err != nil || !strings.Contains(res.Stdout, "tick-8") {
		t.Errorf("kiln builds logs -f through %s: %v\nstdout:\n%s\nstderr:\n%s", rs.ids[other(ri)], res.Err, tail(res.Stdout, 3000), tail(res.Stderr, 3000))
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// 40 source builds of 8 customers, created alternately through r1 and
// r2: every one succeeds, each ran exactly once (its RUN printed its line
// once; its log is one unbroken sequence), and both replicas ran some.
func TestReplicasSourceQueueExactlyOnce(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t)
	const builds, customers = 40, 8
	type created struct {
		id, marker string
		via        int
	}
	all := make([]created, 0, builds)
	for i := range builds {
		marker := fmt.Sprintf("build-%02d", i)
		// Each build's context differs (its id file), so its RUN runs
		// and prints its marker; a second run would print it again. The
		// id files are all of one size and (the archive's) time: a
		// builder must still send each build's own (engine sharedKey).
		data := contextArchive(t, map[string]string{
			"Dockerfile": baseStages + "FROM busybox\nCOPY id /id\nRUN echo \"ran $(head -n 1 /id)\"\n",
			"id":         marker + "\n",
		})
		// Alternate replicas; each customer gets builds through both.
		via := (i + i/customers) % 2
		s := rs.r[via]
		b := s.createSource(t, s.Token, customer(fmt.Sprintf("cust-%d", i%customers)), data)
		all = append(all, created{id: b.BuildId, marker: marker, via: via})
	}
	t.Logf("%d source builds created", len(all))

	deadline := time.Now().Add(8 * time.Minute)
	final := map[string]*kilnv1.Build{}
	for len(final) < len(all) {
		for k, c := range all {
			if final[c.id] != nil {
				continue
			}
			s := rs.r[k%2] // any replica answers
			if b := s.getSourceBuild(t, s.Token, c.id); sourceEnded(b.Status) {
				final[c.id] = b
			}
		}
		if time.Now().After(deadline) {
			var open []string
			for _, c := range all {
				if final[c.id] == nil {
					open = append(open, fmt.Sprintf("%s (%s)", c.id, rs.record(t, c.id).Status))
				}
			}
			t.Fatalf("%d of %d builds not ended after 8 minutes: %s", len(open), len(all), strings.Join(open, ", "))
		}
		time.Sleep(time.Second)
	}

	ran := map[string]int{}
	for k, c := range all {
		b := final[c.id]
		if b.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
			t.Errorf("build %s (%s, created through %s) ended %v: %s", c.id, c.marker, rs.ids[c.via], b.Status, b.Error)
			continue
		}
		rec := rs.record(t, c.id)
		if rs.index(rec.Replica) < 0 {
			t.Errorf("build %s is recorded as run by %q, not by r1 or r2", c.id, rec.Replica)
		}
		ran[rec.Replica]++
		// The whole record, read through the other replica.
		w := rs.r[(k+1)%2].watchNoFollowLogs(t, c.id)
		if n := strings.Count(w.logs.String(), "ran "+c.marker); n != 1 {
			t.Errorf("build %s printed %q %d times: it ran %d times, want exactly once\nlog:\n%s", c.id, "ran "+c.marker, n, n, tail(w.logs.String(), 2000))
		}
		for i, seq := range w.seqs {
			if seq != int64(i+1) {
				t.Errorf("build %s: log line %d has seq %d: lines were lost or written twice", c.id, i, seq)
				break
			}
		}
		if n := strings.Count(w.logs.String(), "ran build-"); n != 1 {
			t.Errorf("build %s's log has %d markers, want its own only", c.id, n)
		}
	}
	t.Logf("builds run per replica: %v", ran)
	for _, id := range rs.ids {
		if ran[id] == 0 {
			t.Errorf("replica %s ran none of the %d builds (%v): the queue is not shared", id, len(all), ran)
		}
	}
}

// watchNoFollowLogs replays a build's whole record (steps, logs, status)
// through s and ends.
func (s *server) watchNoFollowLogs(t *testing.T, buildID string) *watched {
	t.Helper()
	stream, err := s.sourceAPI().WatchBuild(t.Context(), bearer(&kilnv1.WatchBuildRequest{BuildId: buildID, NoFollow: true}, s.Token))
	if err != nil {
		t.Fatalf("WatchBuild %s: %v", buildID, err)
	}
	w := &watched{steps: map[string]*kilnv1.Step{}}
	for stream.Receive() {
		switch e := stream.Msg().Event.(type) {
		case *kilnv1.WatchBuildResponse_Build:
			w.last = e.Build
			w.statuses = append(w.statuses, e.Build.Status)
		case *kilnv1.WatchBuildResponse_Step:
			w.steps[e.Step.Digest] = e.Step
		case *kilnv1.WatchBuildResponse_Log:
			w.logs.WriteString(e.Log.Message)
			w.seqs = append(w.seqs, e.Log.Seq)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("WatchBuild %s (no follow): %v", buildID, err)
	}
	return w
}

// kill -9 of one replica mid-build: a client build whose builder runs on
// it, and source builds it runs. Within the documented bound every one of
// those builds has ended, or (source builds) runs again on the survivor,
// which finishes them; the survivor keeps serving, and the project's next
// build gets a builder there.
func TestReplicasKillOne(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t)
	proj := rs.r[0].createProject(t, "victim")
	warm := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo warm\n"})
	rs.r[0].mustKiln(t, warm, "build", "--project", proj, "--progress", "plain", ".")
	on := rs.buildersOf(t, proj)
	if len(on) != 1 {
		t.Fatalf("replicas running the project's builder after its first build: %v; want one", on)
	}
	v := rs.index(on[0]) // the victim: it runs the project's builder
	sv := other(v)       // the survivor
	victim, survivor := rs.r[v], rs.r[sv]
	t.Logf("victim %s (runs the project's builder), survivor %s", rs.ids[v], rs.ids[sv])

	// A client build through the survivor's API, on the builder of the
	// victim, busy in a long RUN.
	long := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo started && sleep 301\n"})
	client := survivor.kilnAsync(t, long, nil, "build", "--project", proj, "--progress", "plain", ".")
	eventually(t, 2*time.Minute, "the client build's RUN to run", func() bool {
		if client.finished() {
			t.Fatalf("the client build ended before its RUN ran: %v\n%s", client.res.Err, tail(client.res.Stderr, 4000))
		}
		return len(processesNamed("sleep 301")) > 0
	})
	clientID := survivor.latestBuild(t, proj)

	// Source builds created through the victim, running there.
	src := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo source-run && sleep 47\n"})
	var sources []string
	for _, c := range []string{"kill-a", "kill-b"} {
		sources = append(sources, victim.createSource(t, victim.Token, customer(c), src).BuildId)
	}
	eventually(t, 2*time.Minute, "the source builds to run", func() bool {
		for _, id := range sources {
			if b := rs.record(t, id); b.Status != build.Running || b.Replica == "" {
				return false
			}
		}
		return len(processesNamed("sleep 47")) == len(sources)
	})
	onVictim := 0
	for _, id := range sources {
		b := rs.record(t, id)
		t.Logf("source build %s runs on %s", id, b.Replica)
		if b.Replica == rs.ids[v] {
			onVictim++
		}
	}
	if onVictim == 0 {
		t.Fatalf("no source build created through %s runs there (%s, %s): the test needs one on the replica it kills",
			rs.ids[v], rs.record(t, sources[0]).Replica, rs.record(t, sources[1]).Replica)
	}

	rs.kill(t, v)
	killed := time.Now()

	// Within the bound: the client build has ended; each source build has
	// ended or runs again on the survivor.
	settled := func() (bool, string) {
		var open []string
		if b := rs.record(t, clientID); !b.Terminal() {
			open = append(open, fmt.Sprintf("client build %s %s on %q", clientID, b.Status, b.Replica))
		}
		for _, id := range sources {
			b := rs.record(t, id)
			if !b.Terminal() && b.Replica != rs.ids[sv] {
				open = append(open, fmt.Sprintf("source build %s %s on %q", id, b.Status, b.Replica))
			}
		}
		return len(open) == 0, strings.Join(open, "; ")
	}
	for {
		ok, open := settled()
		if ok {
			t.Logf("every build of %s settled %s after the kill", rs.ids[v], time.Since(killed).Round(time.Millisecond))
			break
		}
		if time.Since(killed) > deathBound {
			t.Fatalf("%s after kill -9 of %s (bound %s: replica timeout %s + heartbeat %s + slack), still unsettled: %s",
				time.Since(killed).Round(time.Second), rs.ids[v], deathBound, replicaTimeout, replicaHeartbeat, open)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The client noticed too: kiln build ended with an error, in bounded time.
	res := client.wait(t, deathBound)
	if res.Err == nil {
		t.Errorf("kiln build whose builder died with its replica succeeded:\n%s", tail(res.Stderr, 3000))
	}
	if b := rs.record(t, clientID); b.Status == build.Succeeded {
		t.Errorf("the client build is recorded succeeded although its builder died mid-RUN")
	}

	// The source builds end: re-run on the survivor (succeeded there) or
	// failed, saying why.
	for _, id := range sources {
		eventually(t, 3*time.Minute, "source build "+id+" to end", func() bool { return rs.record(t, id).Terminal() })
		b := rs.record(t, id)
		switch {
		case b.Status == build.Succeeded && b.Replica != rs.ids[sv]:
			t.Errorf("source build %s succeeded on %q after %s died; only the survivor could finish it", id, b.Replica, rs.ids[v])
		case b.Status != build.Succeeded && b.Error == "":
			t.Errorf("source build %s ended %s without saying why", id, b.Status)
		}
		t.Logf("source build %s: %s on %s %s", id, b.Status, b.Replica, b.Error)
		if api := survivor.getSourceBuild(t, survivor.Token, id); !sourceEnded(api.Status) {
			t.Errorf("the survivor answers source build %s is %v", id, api.Status)
		}
	}

	// The survivor serves: the project's next build succeeds, on a builder
	// the survivor starts (the dead replica's cache is gone with it).
	next := survivor.kiln(t, warm, nil, "build", "--project", proj, "--progress", "plain", ".")
	if next.Err != nil {
		t.Fatalf("kiln build through the survivor after %s died: %v\n%s", rs.ids[v], next.Err, tail(next.Stderr, 6000))
	}
	if !rs.builderOn(t, sv, proj) {
		t.Errorf("the project's build after %s died did not run on a builder of the survivor %s", rs.ids[v], rs.ids[sv])
	}
	// A new source build through the survivor runs too.
	b := survivor.createSource(t, survivor.Token, customer("after-kill"), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo after\n"}))
	if w := survivor.watch(t, survivor.Token, b.BuildId, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Errorf("a source build through the survivor: %v %s", w.last.Status, w.last.Error)
	}

	// The killed replica comes back and answers again: a build of the
	// project through it runs on the builder the survivor now holds.
	rs.restart(t, v)
	if got := victim.getSourceBuild(t, victim.Token, sources[0]); !sourceEnded(got.Status) {
		t.Errorf("the restarted %s answers source build %s is %v", rs.ids[v], sources[0], got.Status)
	}
	back := victim.kiln(t, warm, nil, "build", "--project", proj, "--progress", "plain", ".")
	if back.Err != nil {
		t.Fatalf("kiln build through the restarted %s: %v\n%s", rs.ids[v], back.Err, tail(back.Stderr, 6000))
	}
	if on := rs.buildersOf(t, proj); !slices.Equal(on, []string{rs.ids[sv]}) {
		t.Errorf("after %s came back, replicas running the project's builder: %v; want only the survivor %s", rs.ids[v], on, rs.ids[sv])
	}
}

// A source build canceled through the replica that does not run it stops
// within seconds: its RUN process is gone and either replica says
// canceled.
func TestReplicasCancelAcross(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t)
	data := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 319\n"})
	b := rs.r[0].createSource(t, rs.r[0].Token, customer("cancelco"), data)
	eventually(t, 2*time.Minute, "the RUN process to run", func() bool { return len(processesNamed("sleep 319")) > 0 })
	ri := rs.index(rs.record(t, b.BuildId).Replica)
	if ri < 0 {
		t.Fatalf("build %s runs, but the store names no replica of this test as running it (%q)", b.BuildId, rs.record(t, b.BuildId).Replica)
	}
	c := rs.r[other(ri)]
	t.Logf("build %s runs on %s; canceled through %s", b.BuildId, rs.ids[ri], rs.ids[other(ri)])
	res, err := c.sourceAPI().CancelBuild(t.Context(), bearer(&kilnv1.CancelBuildRequest{BuildId: b.BuildId}, c.Token))
	if err != nil {
		t.Fatalf("CancelBuild through %s: %v", rs.ids[other(ri)], err)
	}
	if res.Msg.Build.Status != kilnv1.BuildStatus_BUILD_STATUS_CANCELED {
		t.Errorf("CancelBuild through %s answered %v", rs.ids[other(ri)], res.Msg.Build.Status)
	}
	eventually(t, 20*time.Second, "the RUN process on "+rs.ids[ri]+" to be killed", func() bool { return len(processesNamed("sleep 319")) == 0 })
	for i, s := range rs.r {
		if got := s.getSourceBuild(t, s.Token, b.BuildId); got.Status != kilnv1.BuildStatus_BUILD_STATUS_CANCELED {
			t.Errorf("after the cancel %s says the build is %v", rs.ids[i], got.Status)
		}
	}
}

// The registry in S3 through both replicas: an image pushed through r1 is
// listed and pulled through r2 with a registry token r1 issued (the token
// key is shared), an upload spread over both replicas completes, and the
// project's registry conformance workflows (through each replica) and the
// OCI suite (through r2) pass.
func TestReplicasRegistry(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t)
	r1, r2 := rs.r[0], rs.r[1]
	proj := r1.createProject(t, "shared-registry")
	repo := proj + "/app"
	manifest, blobs := r1.oci(t, r1.Token).pushImage(repo, "v1", "pushed through r1")

	// A registry token from r1's token endpoint, used at r2.
	tok := registryToken(t, r1, "repository:"+repo+":pull")
	bearerAt := &ociClient{t: t, base: r2.URL, auth: "Bearer " + tok}
	res := bearerAt.do("GET", "/v2/"+repo+"/tags/list", nil)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("r2 refuses a registry token r1 issued: HTTP %d %s (registry tokens must be valid on every replica)", res.StatusCode, tail(string(body), 300))
	}
	if !strings.Contains(string(body), `"v1"`) {
		t.Errorf("tags of %s through r2: %s; want v1 (pushed through r1)", repo, body)
	}
	res, got := bearerAt.expect(http.StatusOK, "GET", "/v2/"+repo+"/manifests/v1", nil)
	if d := res.Header.Get("Docker-Content-Digest"); d != manifest.Digest.String() {
		t.Errorf("manifest v1 through r2 has digest %s, pushed %s (%d bytes)", d, manifest.Digest, len(got))
	}
	for _, b := range blobs {
		_, content := bearerAt.expect(http.StatusOK, "GET", "/v2/"+repo+"/blobs/"+b.Digest.String(), nil)
		if int64(len(content)) != b.Size {
			t.Errorf("blob %s through r2: %d bytes, pushed %d", b.Digest, len(content), b.Size)
		}
	}
	// The token grants pull only, on r2 as on r1.
	if res := bearerAt.do("POST", "/v2/"+repo+"/blobs/uploads/", nil); res.StatusCode == http.StatusAccepted {
		t.Errorf("a pull-only registry token from r1 started an upload on r2")
	} else {
		res.Body.Close()
	}

	// A chunked upload spread over both replicas, as a load balancer
	// spreads a client's requests: begun on r1, one chunk on each, the
	// status asked of r2, finished on r2; the blob is there through r1.
	c1, c2 := r1.oci(t, r1.Token), r2.oci(t, r2.Token)
	chunked := randomBytes(2 * 1024)
	cd := digest.FromBytes(chunked)
	res, _ = c1.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	loc := c1.location(res)
	for i, c := range []*ociClient{c2, c1} {
		res, _ = c.expect(http.StatusAccepted, "PATCH", loc, chunked[i*1024:(i+1)*1024], "Content-Type", "application/octet-stream",
			"Content-Range", fmt.Sprintf("%d-%d", i*1024, (i+1)*1024-1), "Content-Length", "1024")
		loc = c.location(res)
	}
	if res, _ := c2.expect(http.StatusNoContent, "GET", loc, nil); res.Header.Get("Range") != "0-2047" {
		t.Errorf("the upload's status through r2: Range %q, want 0-2047", res.Header.Get("Range"))
	}
	c2.expect(http.StatusCreated, "PUT", withDigest(loc, cd), nil, "Content-Length", "0")
	if _, got := c1.expect(http.StatusOK, "GET", "/v2/"+repo+"/blobs/"+cd.String(), nil); !bytes.Equal(got, chunked) {
		t.Errorf("the blob uploaded over both replicas reads back %d bytes through r1, not the %d pushed", len(got), len(chunked))
	}

	t.Run("conformance through r2", func(t *testing.T) { registryConformance(t, r2) })
	t.Run("conformance through r1", func(t *testing.T) { registryConformance(t, r1) })
	t.Run("oci suite through r2", func(t *testing.T) { ociSuite(t, r2) })
}

// registryToken exchanges s's admin token for a registry token of scope
// at s's token endpoint, as a Docker client does after a 401.
func registryToken(t *testing.T, s *server, scope string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+"/v2/token?service=kiln&scope="+scope, nil)
	req.SetBasicAuth("x-token", s.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out struct{ Token string }
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != http.StatusOK || out.Token == "" {
		t.Fatalf("GET %s/v2/token: HTTP %d %v", s.URL, res.StatusCode, err)
	}
	return out.Token
}
