package seal

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	key := bytes.Repeat([]byte{7}, KeySize)
	s, err := Seal(key, "build-1", []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains([]byte(s), []byte("hunter2")) {
		t.Fatal("sealed value holds the plain text")
	}
	if again, _ := Seal(key, "build-1", []byte("hunter2")); again == s {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	if got, err := Open(key, "build-1", s); err != nil || string(got) != "hunter2" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := Open(key, "build-2", s); !errors.Is(err, ErrKey) {
		t.Fatalf("moved to another build: %v", err)
	}
	if _, err := Open(bytes.Repeat([]byte{8}, KeySize), "build-1", s); !errors.Is(err, ErrKey) {
		t.Fatalf("another key: %v", err)
	}
	for _, bad := range []string{"", "!!", "AAAA"} {
		if _, err := Open(key, "build-1", bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Open(%q) = %v, want ErrCorrupt", bad, err)
		}
	}
	if _, err := Seal([]byte("short"), "", nil); err == nil {
		t.Fatal("a short key accepted")
	}
}
