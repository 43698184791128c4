package engine

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/units"
)

// CopyOptions say what [CopyImage] copies where.
type CopyOptions struct {
	// Source is the image to copy; SourceAuth authenticates to its
	// registry (nil: anonymous).
	Source     string
	SourceAuth authn.Authenticator
	// Dests are the references to copy to (NAME[:TAG]; no tag is :latest).
	Dests []string
	// Keychain authenticates to the destination registries; nil is the
	// user's Docker credentials (~/.docker/config.json, credential helpers).
	Keychain authn.Keychain
	// Insecure allows plain HTTP to any destination; loopback registries
	// are reached over plain HTTP anyway.
	Insecure bool
	// Progress receives one line per second while bytes move, then one per
	// destination when it is done; nil discards them.
	Progress io.Writer
}

// CheckCopyDests validates destination references (-t) before anything is
// read or written.
func CheckCopyDests(dests []string, insecure bool) error {
	if len(dests) == 0 {
		return errdefs.Invalidf("-t: give at least one destination, e.g. -t registry.example.com/app:1")
	}
	for _, d := range dests {
		if _, err := name.ParseReference(d, nameOpts(insecure)...); err != nil {
			return errdefs.InvalidWrapf(err, "-t %q", clip(d, 200))
		}
		if err := CheckImageNames("-t", []string{d}); err != nil {
			return err
		}
	}
	return nil
}

func nameOpts(insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

// CopyImage copies an image or image index from one registry to others,
// registry to registry: manifests are written byte for byte (so digests,
// every platform of an index and its attestation manifests are unchanged)
// and layers stream from the source to each destination without a local
// copy; a destination on the source's registry mounts them instead. It
// returns the digest of what it copied.
func CopyImage(ctx context.Context, o CopyOptions) (string, error) {
	if err := CheckCopyDests(o.Dests, o.Insecure); err != nil {
		return "", err
	}
	src, err := name.ParseReference(o.Source)
	if err != nil {
		return "", errdefs.InvalidWrapf(err, "source image %q", clip(o.Source, 200))
	}
	srcAuth := o.SourceAuth
	if srcAuth == nil {
		srcAuth = authn.Anonymous
	}
	desc, err := remote.Get(src, remote.WithContext(ctx), remote.WithAuth(srcAuth))
	if err != nil {
		return "", registryError(err, "reading %s", src)
	}
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	out := o.Progress
	if out == nil {
		out = io.Discard
	}
	for _, d := range o.Dests {
		dst, _ := name.ParseReference(d, nameOpts(o.Insecure)...) // checked above
		updates := make(chan v1.Update, 64)
		printed := make(chan struct{})
		go func() {
			defer close(printed)
			printProgress(out, dst.String(), updates)
		}()
		opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithProgress(updates), remote.WithJobs(4)}
		switch {
		case desc.MediaType.IsIndex():
			var idx v1.ImageIndex
			if idx, err = desc.ImageIndex(); err == nil {
				err = remote.WriteIndex(dst, idx, opts...)
			}
		case desc.MediaType.IsImage():
			var img v1.Image
			if img, err = desc.Image(); err == nil {
				err = remote.Write(dst, img, opts...)
			}
		default:
			close(updates)
			<-printed
			return "", fmt.Errorf("%s is a %s, not an image or image index", src, desc.MediaType)
		}
		<-printed // WriteIndex and Write close updates when they return
		if err != nil {
			return "", registryError(err, "pushing %s to %s", src, dst)
		}
		fmt.Fprintf(out, "pushed %s (%s)\n", dst, desc.Digest)
	}
	return desc.Digest.String(), nil
}

// printProgress prints the bytes copied to dest at most once a second,
// and the final count.
func printProgress(w io.Writer, dest string, updates <-chan v1.Update) {
	var last v1.Update
	var at time.Time
	shown := true
	for u := range updates {
		if u.Error != nil {
			continue
		}
		last, shown = u, false
		if time.Since(at) >= time.Second {
			at, shown = time.Now(), true
			fmt.Fprintf(w, "copying to %s: %s / %s\n", dest, units.Bytes(u.Complete), units.Bytes(u.Total))
		}
	}
	if !shown && last.Total > 0 {
		fmt.Fprintf(w, "copying to %s: %s / %s\n", dest, units.Bytes(last.Complete), units.Bytes(last.Total))
	}
}

// ImageDigest returns the digest of ref as its registry has it, reading
// only the manifest's headers. A missing image is an error wrapping
// errdefs.ErrNotFound, refused credentials ErrUnauthenticated or
// ErrPermission, an unreachable registry ErrUnavailable.
func ImageDigest(ctx context.Context, ref string, auth authn.Authenticator) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", errdefs.InvalidWrapf(err, "image %q", clip(ref, 200))
	}
	if auth == nil {
		auth = authn.Anonymous
	}
	desc, err := remote.Head(r, remote.WithContext(ctx), remote.WithAuth(auth))
	if err != nil {
		return "", registryError(err, "%s", r)
	}
	return desc.Digest.String(), nil
}
