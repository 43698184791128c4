package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// What `kiln configure-docker` changes in a Docker config directory, and
// what it keeps so that --uninstall puts everything back:
//
//   - config.json gets "aliases": {"builder": "buildx"}: Docker CLI 20.10
//     (Debian 12's docker.io) sends `docker build` to the buildx plugin only
//     with that alias (cmd/docker/docker.go processAliases); 23.0 and later
//     do it whenever a buildx plugin is installed, and with the alias even
//     without asking the daemon. Compose takes the alias as "BuildKit on"
//     too. The original bytes are copied to the state directory.
//   - cli-plugins/docker-buildx becomes a link to kiln (the buildx shim,
//     dockerbuildx.go); a docker-buildx that was there is moved into the
//     state directory, not deleted, and kiln hands it the buildx commands it
//     does not do itself (ls, du, imagetools, …).
//   - cli-plugins/docker-kiln, the `docker kiln …` plugin, as before.
//
// The state directory is <config dir>/kiln-configure-docker.

// dockerState is state.json in the state directory.
type dockerState struct {
	// ConfigExisted: config.json existed before the install (its bytes are
	// config.json.orig); if not, --uninstall removes the one kiln wrote.
	ConfigExisted bool `json:"config_existed"`
	// ConfigMode is config.json's permission bits before the install.
	ConfigMode fs.FileMode `json:"config_mode,omitempty"`
	// WrittenSHA256 is the digest of the config.json kiln wrote: while the
	// file is unchanged, --uninstall restores the original bytes; if the
	// user (docker login, …) changed it since, only kiln's alias is undone.
	WrittenSHA256 string `json:"written_sha256"`
	// PrevBuilderAlias is aliases.builder before the install, nil if unset.
	PrevBuilderAlias *string `json:"prev_builder_alias,omitempty"`
	// HadAliases: the config had an "aliases" object before the install.
	HadAliases bool `json:"had_aliases"`
	// PrevBuildx: a docker-buildx plugin was moved to docker-buildx.orig.
	PrevBuildx bool `json:"prev_buildx"`
	// Exe is the kiln binary the plugins link to, so that --uninstall
	// knows its links whatever the binary is called.
	Exe string `json:"exe,omitempty"`
	// Created lists the directories the install made (cli-plugins, the
	// config dir itself), removed on uninstall if empty.
	Created []string `json:"created,omitempty"`
}

const (
	stateDirName   = "kiln-configure-docker"
	origConfigName = "config.json.orig"
	origBuildxName = "docker-buildx.orig"
)

func stateDir(configDir string) string { return filepath.Join(configDir, stateDirName) }

func readDockerState(configDir string) (*dockerState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir(configDir), "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st dockerState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %v", filepath.Join(stateDir(configDir), "state.json"), err)
	}
	return &st, nil
}

func writeDockerState(configDir string, st *dockerState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir(configDir), "state.json"), b, 0o600)
}

// readDockerConfig reads config.json as its top-level keys. A missing file
// is an empty config; one that is not a JSON object is an error naming it.
func readDockerConfig(path string) (raw []byte, keys map[string]json.RawMessage, mode fs.FileMode, exists bool, err error) {
	raw, err = os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, map[string]json.RawMessage{}, 0o600, false, nil
	}
	if err != nil {
		return nil, nil, 0, false, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, 0, false, err
	}
	keys = map[string]json.RawMessage{}
	if len(bytes.TrimSpace(raw)) > 0 { // the Docker CLI reads an empty file as {}
		if err := json.Unmarshal(raw, &keys); err != nil {
			return nil, nil, 0, false, fmt.Errorf("%s is not a valid Docker config (a JSON object): %v; fix or remove it, nothing was changed: %w", path, err, errdefs.ErrInvalid)
		}
	}
	return raw, keys, fi.Mode().Perm(), true, nil
}

// builderAlias reads aliases.builder from the config's keys.
func builderAlias(path string, keys map[string]json.RawMessage) (aliases map[string]json.RawMessage, prev *string, err error) {
	aliases = map[string]json.RawMessage{}
	if a, ok := keys["aliases"]; ok && string(a) != "null" {
		if err := json.Unmarshal(a, &aliases); err != nil {
			return nil, nil, fmt.Errorf("%s: \"aliases\" is not an object: %v; nothing was changed: %w", path, err, errdefs.ErrInvalid)
		}
	}
	if b, ok := aliases["builder"]; ok {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, nil, fmt.Errorf("%s: \"aliases.builder\" is not a string; nothing was changed: %w", path, errdefs.ErrInvalid)
		}
		prev = &s
	}
	return aliases, prev, nil
}

// encodeDockerConfig writes the keys the way the Docker CLI does
// (tab-indented), other keys' values as they were.
func encodeDockerConfig(keys map[string]json.RawMessage) ([]byte, error) {
	return json.MarshalIndent(keys, "", "\t")
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// configFile is config.json, or the file it links to (a dotfiles
// checkout): kiln writes that file and leaves the link a link.
func configFile(configDir string) string {
	path := filepath.Join(configDir, "config.json")
	if real, err := filepath.EvalSymlinks(path); err == nil {
		return real
	}
	return path
}

// setBuilderAlias points aliases.builder at buildx in config.json, keeping
// everything else; it records in st what was there.
func setBuilderAlias(configDir string, st *dockerState) error {
	path := configFile(configDir)
	raw, keys, mode, exists, err := readDockerConfig(path)
	if err != nil {
		return err
	}
	aliases, prev, err := builderAlias(path, keys)
	if err != nil {
		return err
	}
	if exists {
		if err := atomicfile.Write(filepath.Join(stateDir(configDir), origConfigName), raw, 0o600); err != nil {
			return err
		}
	}
	_, st.HadAliases = keys["aliases"]
	st.ConfigExisted, st.ConfigMode, st.PrevBuilderAlias = exists, mode, prev
	aliases["builder"] = json.RawMessage(`"buildx"`)
	if keys["aliases"], err = json.Marshal(aliases); err != nil {
		return err
	}
	out, err := encodeDockerConfig(keys)
	if err != nil {
		return err
	}
	st.WrittenSHA256 = sha256Hex(out)
	return atomicfile.Write(path, out, mode)
}

// restoreDockerConfig undoes setBuilderAlias: the original bytes if
// config.json is still what kiln wrote, else only the alias. It says which.
func restoreDockerConfig(configDir string, st *dockerState) (string, error) {
	path := configFile(configDir)
	cur, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return path + " was removed since the install; left as it is", nil
	}
	if err != nil {
		return "", err
	}
	if sha256Hex(cur) == st.WrittenSHA256 {
		if !st.ConfigExisted {
			return "removed " + path + " (kiln had created it)", os.Remove(path)
		}
		orig, err := os.ReadFile(filepath.Join(stateDir(configDir), origConfigName))
		if err != nil {
			return "", err
		}
		return "restored " + path + " as it was before the install", atomicfile.Write(path, orig, st.ConfigMode)
	}
	// Changed since (docker login, a context switch …): keep those
	// changes, take back only the alias.
	_, keys, mode, _, err := readDockerConfig(path)
	if err != nil {
		return "", err
	}
	aliases, cur2, err := builderAlias(path, keys)
	if err != nil {
		return "", err
	}
	if cur2 == nil || *cur2 != "buildx" {
		return path + " changed since the install and has no builder alias of kiln's; left as it is", nil
	}
	delete(aliases, "builder")
	if st.PrevBuilderAlias != nil {
		aliases["builder"], _ = json.Marshal(*st.PrevBuilderAlias)
	}
	if len(aliases) == 0 && !st.HadAliases {
		delete(keys, "aliases")
	} else if keys["aliases"], err = json.Marshal(aliases); err != nil {
		return "", err
	}
	out, err := encodeDockerConfig(keys)
	if err != nil {
		return "", err
	}
	return path + " changed since the install: kept those changes, removed only the builder alias", atomicfile.Write(path, out, mode)
}
