// Package demand resolves demand reads: it makes byte ranges of a blob present in the local store,
// chunk by chunk, from the local store, then peers, then the origin, and prefetches in the
// background. Each kernel frontend lives in its own subpackage.
package demand
