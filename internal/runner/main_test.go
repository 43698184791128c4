package runner

import (
	"testing"

	"github.com/kiln-dev/kiln/internal/store/pgtest"
)

// TestMain stops the Postgres server a test started (pgtest).
func TestMain(m *testing.M) { pgtest.Main(m) }
