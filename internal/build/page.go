package build

import (
	"context"
	"encoding/base64"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// A build page token names the project and the last build of the previous
// page ("b1|<project>|<created unix ms>|<build id>", base64url). It is
// opaque to clients; carrying the project makes a token from one listing
// useless for another.
const pageTokenVersion = "b1"

var idRe = regexp.MustCompile(`^[0-9a-z_]{1,64}$`)

func encodePageToken(projectID string, last Build) string {
	raw := strings.Join([]string{pageTokenVersion, projectID, strconv.FormatInt(last.CreatedAt.UnixMilli(), 10), last.ID}, "|")
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodePageToken(projectID, tok string) (time.Time, string, error) {
	bad := fmt.Errorf("malformed or foreign page token: %w", errdefs.ErrInvalid)
	if len(tok) > 400 {
		return time.Time{}, "", bad
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return time.Time{}, "", bad
	}
	parts := strings.Split(string(raw), "|")
	if len(parts) != 4 || parts[0] != pageTokenVersion || parts[1] != projectID || !idRe.MatchString(parts[3]) {
		return time.Time{}, "", bad
	}
	ms, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || ms <= 0 || ms > 1<<50 {
		return time.Time{}, "", bad
	}
	return time.UnixMilli(ms).UTC(), parts[3], nil
}

// Page lists a project's builds newest first, pageSize at a time (0 → 50,
// at most 500). A project token may leave projectID empty for its own
// project. next is "" on the last page.
func (s *Service) Page(ctx context.Context, p auth.Principal, projectID string, pageSize int, pageToken string) (builds []Build, next string, err error) {
	if projectID == "" && p.Kind == auth.TokenProject {
		projectID = p.ProjectID
	}
	if projectID == "" {
		return nil, "", fmt.Errorf("project id is required: %w", errdefs.ErrInvalid)
	}
	if p.Kind == auth.TokenBuild {
		// Before the lookup, so the answer is the same for any project id.
		return nil, "", fmt.Errorf("build tokens cannot list builds: %w", errdefs.ErrPermission)
	}
	proj, err := s.store.GetProject(ctx, projectID)
	if err != nil {
		return nil, "", err
	}
	if !p.CanSeeProject(proj) {
		return nil, "", fmt.Errorf("project %q: %w", projectID, errdefs.ErrNotFound)
	}
	if pageSize < 0 {
		return nil, "", fmt.Errorf("page size must not be negative: %w", errdefs.ErrInvalid)
	}
	if pageSize == 0 {
		pageSize = 50
	}
	pageSize = min(pageSize, 500)
	q := Query{ProjectID: projectID, Limit: pageSize}
	if pageToken != "" {
		if q.BeforeCreated, q.BeforeID, err = decodePageToken(projectID, pageToken); err != nil {
			return nil, "", err
		}
	}
	builds, err = s.store.QueryBuilds(ctx, q)
	if err != nil {
		return nil, "", err
	}
	if len(builds) == pageSize {
		next = encodePageToken(projectID, builds[len(builds)-1])
	}
	return builds, next, nil
}
