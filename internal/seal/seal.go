// Package seal encrypts small values kept at rest (in the store): AES-256-GCM
// with a random nonce, written as base64 of the nonce followed by the
// ciphertext. The additional data binds a sealed value to what it belongs to
// (a build, a secret's name), so a value moved elsewhere does not open.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
)

// KeySize is the key's size in bytes.
const KeySize = 32

// Errors Open returns.
var (
	ErrCorrupt = errors.New("the stored value is not a sealed value")
	ErrKey     = errors.New("it does not open with this key")
)

// Seal encrypts plain under key (KeySize bytes) bound to ad.
func Seal(key []byte, ad string, plain []byte) (string, error) {
	aead, err := gcm(key)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, []byte(ad))), nil
}

// Open decrypts what Seal made with key and ad: ErrCorrupt if it is not a
// sealed value, ErrKey if key or ad differ (or it was altered).
func Open(key []byte, ad, sealed string) ([]byte, error) {
	aead, err := gcm(key)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(b) < aead.NonceSize() {
		return nil, ErrCorrupt
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, b[:n], b[n:], []byte(ad))
	if err != nil {
		return nil, ErrKey
	}
	return plain, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, errors.New("seal: the key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
