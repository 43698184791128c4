package cluster

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// peerLabel is what the replicas' bearer is derived from: the cluster key
// itself never travels.
const peerLabel = "kiln-replica-v1"

// PeerToken is the bearer replicas present to each other's internal API:
// HMAC-SHA256(cluster key, "kiln-replica-v1"), in hex. "" without a key:
// a single replica has no peers and accepts none.
func (c *Cluster) PeerToken() string {
	if !c.Shared() {
		return ""
	}
	m := hmac.New(sha256.New, c.cfg.Key)
	m.Write([]byte(peerLabel))
	return hex.EncodeToString(m.Sum(nil))
}

// PeerAuthentic reports whether token is PeerToken, compared in constant
// time; always false without a key.
func (c *Cluster) PeerAuthentic(token string) bool {
	want := c.PeerToken()
	return want != "" && subtle.ConstantTimeCompare([]byte(token), []byte(want)) == 1
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
