// Package pki is kiln's certificate authority. One root CA, persisted under a
// directory, signs one intermediate CA per project; each project's CA signs
// that project's builder server certificates and its short-lived client
// certificates.
//
// The per-project CA is what isolates tenants: a project's builder is started
// with only that project's CA as its client-certificate trust anchor, so a
// client certificate issued for project A is refused by project B's builder
// even though both chain to the same root. Clients verify a builder with the
// same project CA.
//
// Layout of the directory (keys are 0600, directories 0700):
//
//	ca.crt, ca.key                       the root
//	projects/<project>/ca.crt, ca.key    the project CAs, created on first use
//
// Several replicas of kiln serve must share the CAs (a client's certificate
// from one replica is checked by a builder another started): with Shared
// the CAs are kept sealed in the store (keys.go) and mirrored into the
// directory, which keeps the layout above.
//
// All keys are ECDSA P-256. Errors wrap errdefs kinds.
package pki
