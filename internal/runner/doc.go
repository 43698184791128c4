// Package runner runs source builds, kiln's platform API: a platform
// uploads a customer's source as an archive straight to blob storage
// (presigned URL), then asks for a build of it. The runner keeps the queue
// (bounded concurrency per project and overall, fair order between
// projects), fetches the context, checks its size and digest, extracts it
// safely (internal/archive), solves it on the customer's project builder
// through internal/engine, pushes the image to kiln's registry, and stores
// steps and logs as they happen for watchers. It also deletes uploaded
// contexts when their retention ends.
//
// Replicas of kiln serve sharing a store share its queue: a build created
// through any replica runs once, on whichever replica claims it first; it
// can be watched and canceled through any; a dead replica's builds run
// again on a live one (Runner, sync.go).
//
// It builds on the build domain (internal/build: the persisted state
// machine) and knows nothing of Connect or HTTP; internal/api/kiln adapts
// it to kiln.v1.SourceBuildService.
package runner
