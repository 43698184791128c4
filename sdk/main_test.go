package sdk_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/kilntest"
)

// TestMain runs the tests and examples against one real kiln server, with
// a project made for them. They find it as a program would: KILN_API_URL,
// KILN_TOKEN and KILN_PROJECT_ID.
func TestMain(m *testing.M) {
	os.Exit(kilntest.Main(m, func(s *kilntest.Server) error {
		project, err := s.CreateProject(context.Background(), "sdk-test")
		if err != nil {
			return err
		}
		home := filepath.Join(s.Data, "home") // removed with the server
		if err := os.Mkdir(home, 0o700); err != nil {
			return err
		}
		// Nothing of the user's: no kiln login file, no Docker config.
		for k, v := range map[string]string{"KILN_API_URL": s.URL, "KILN_TOKEN": s.Token, "KILN_PROJECT_ID": project,
			"HOME": home, "XDG_CONFIG_HOME": "", "DOCKER_CONFIG": "", "DEPOT_TOKEN": "", "DEPOT_API_URL": "", "DEPOT_PROJECT_ID": ""} {
			os.Setenv(k, v)
		}
		return nil
	}))
}
