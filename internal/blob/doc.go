// Package blob stores the build contexts that platforms upload for kiln's
// server-side builds. Clients never send those bytes through the control
// plane's API: they ask for a presigned PUT URL and upload straight to
// storage (`curl -T ctx.tar.gz "$URL"`); kiln's build runner reads the object
// back later.
//
// Store is the one interface, with two backends:
//
//   - Local keeps objects on kiln's own disk (the embedded default). kiln
//     itself serves the uploads: Local.Handler accepts PUT /blobs/{key} on
//     kiln's HTTP listener, but only with an HMAC-signed, expiring URL from
//     Local.PresignPut, and it can enforce a size limit and a digest.
//   - S3 keeps objects in an S3 bucket (AWS, MinIO, versitygw, ...), with
//     separate endpoints for kiln (internal) and for uploaders (public).
//
// Both pass one conformance suite, blobtest.Run. Keys are plain
// slash-separated names (see ValidKey); the caller decides the layout
// (e.g. "contexts/<project>/<id>.tar.gz").
//
// The package knows nothing of projects, builds, Connect or authentication:
// whoever hands out a URL has already decided the caller may write that key.
// It depends on internal/errdefs only (and the AWS SDK for the S3 backend);
// errors wrap errdefs kinds, and it logs nothing.
package blob
