package cluster

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strconv"
	"strings"
	"time"
)

// peerLabel is what the replicas' bearer is derived from: the cluster key
// itself never travels.
const peerLabel = "kiln-replica-v1"

// peerSkew is how far a bearer's time may be from the receiver's: a
// bearer seen on the wire is good for this long at most.
const peerSkew = 2 * time.Minute

// PeerToken is the bearer replicas present to each other's internal API:
// "UNIX.MAC", the time it was made and HMAC-SHA256(cluster key,
// "kiln-replica-v1|UNIX") in hex. "" without a key: a single replica has
// no peers and accepts none.
func (c *Cluster) PeerToken() string { return c.peerToken(time.Now().Unix()) }

func (c *Cluster) peerToken(unix int64) string {
	if !c.Shared() {
		return ""
	}
	ts := strconv.FormatInt(unix, 10)
	m := hmac.New(sha256.New, c.cfg.Key)
	m.Write([]byte(peerLabel + "|" + ts))
	return ts + "." + hex.EncodeToString(m.Sum(nil))
}

// PeerAuthentic reports whether token is a PeerToken made within peerSkew
// of now, compared in constant time; always false without a key.
func (c *Cluster) PeerAuthentic(token string) bool {
	ts, _, ok := strings.Cut(token, ".")
	if !ok || !c.Shared() {
		return false
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	if d := time.Since(time.Unix(unix, 0)); d > peerSkew || d < -peerSkew {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(token), []byte(c.peerToken(unix))) == 1
}

// Peers are the other live replicas, as last listed.
func (c *Cluster) Peers() []Replica {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Replica
	for id, r := range c.members {
		if id != c.Self() && c.silentFor(r) < c.cfg.Timeout {
			out = append(out, r)
		}
	}
	return out
}
