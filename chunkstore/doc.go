// Package chunkstore keeps verified chunks on local disk, in backing files laid out exactly as the
// kernel's cachefiles backend lays them out, indexed in badger.
package chunkstore
