package steps

// maxSolveRef bounds a solve ref's length. BuildKit's clients name a solve
// with identity.NewID: 25 characters of [0-9a-z].
const maxSolveRef = 64

// ValidSolveRef reports whether ref has the form of a BuildKit solve ref
// (1 to 64 characters of [a-z0-9]). The client chooses a solve's ref and
// the gateway's tap reads it from its Solve request: anything else (huge,
// or with bytes a log line should not carry) is neither reported by the
// tap nor followed.
func ValidSolveRef(ref string) bool {
	if len(ref) == 0 || len(ref) > maxSolveRef {
		return false
	}
	for i := 0; i < len(ref); i++ {
		if c := ref[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
