// Package archive is kiln's one tar extractor for build contexts. The server
// uses it to unpack a customer's uploaded context (untrusted: anyone with a
// project token can send one), and the CLI uses it for `kiln build -` when
// stdin holds a tar archive.
//
// Extract reads a tar stream, plain or gzip- or bzip2-compressed, into an
// empty directory and promises:
//
//   - nothing is created, changed or removed outside that directory: names
//     that are absolute or climb out with "..", writes through symlinks, and
//     hardlinks to anything but a regular file already extracted (reached
//     without symlinks) are refused, and files are opened with O_NOFOLLOW;
//   - symlinks are kept as they are, whatever they point at (an absolute
//     out/bin/[ -> /bin/busybox is normal in a real repository, and
//     BuildKit's COPY keeps it too), and never followed: whoever reads the
//     extracted tree finds files with ResolveInRoot, which refuses a path
//     through a link that leaves the directory or is absolute;
//   - no device or fifo nodes; setuid, setgid and sticky bits are dropped
//     or, with Policy.RejectSpecialBits, refused;
//   - bounded work and memory: limits on input size, extracted size, entry
//     count, path depth and expansion ratio stop archive bombs as the stream
//     is read, and no entry is ever held in memory;
//   - a truncated or corrupt stream is an error, never a silent partial
//     success: the tar end-of-archive marker and the compression trailer are
//     both checked.
//
// Rejections wrap errdefs.ErrInvalid (limits too: an archive over a limit is
// a bad input, not a transient shortage) and name the entry and the problem
// without any server path. On error the caller removes the directory.
//
// Extract hashes the input as it reads it, but a digest can only be checked
// after the fact when streaming. The server therefore copies an upload to a
// temporary file with CopyHashed, compares the digest with the one the client
// declared, and only then extracts the file.
//
// CheckHeader is the part of these rules an entry's header alone decides;
// the CLI checks every file of a context it packs with it before uploading.
//
// The package depends on nothing in kiln except errdefs, and logs nothing.
package archive
