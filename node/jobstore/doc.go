// Package jobstore keeps a submitter's job records in an embedded bbolt file
// (the data dir's jobs.db), one record a job, so that changing one job
// writes that job and not every job the peer ever submitted.
//
// A record is opaque bytes (node stores a Job as JSON) keyed by the job's ID,
// with the job's created time beside it for ordering. Each Put, Delete and
// Migrate is one bbolt transaction, fsync'd before it returns: a record that
// Put accepted survives a crash.
//
// The file holds three buckets:
//
//	jobs     ID -> created key (8 bytes) + record
//	created  created key (8 bytes, big-endian, ordered) + ID -> nothing
//	meta     "version" -> "1", "count" -> the number of records (8 bytes)
//
// The created bucket is the index List pages through, newest first, in
// O(limit) per page; its cursor is an opaque string naming the last record
// of a page.
//
// Migrate moves an older data dir's jobs.json into the store in one
// transaction and then renames the file to jobs.json.migrated.
//
// A Store is safe for concurrent use. Only one process may open a store at a
// time: bbolt locks the file, and a second Open fails after OpenTimeout with
// ErrLocked.
package jobstore
