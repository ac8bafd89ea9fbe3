// Package zchunk encodes and decodes the stored form of a chunk (chunk.Codec): zstd frames, one
// per chunk, without a dictionary (chunk.CodecZstd) or with the blob's trained dictionary
// (chunk.CodecZstdDict, dict.go: Train, ParseDict, DictOf, Encoder.WithDict, DecodeWith), or
// the raw bytes where compression does not pay.
//
// Decoding is the side that meets untrusted bytes (an origin, a peer): the output is capped at the
// chunk's length before any allocation grows past it, a frame that declares more, names another
// dictionary than its codec says (none for zstd, the manifest's for zstd-dict: checked in the
// frame header before decoding), is truncated or decodes to another length is refused, and every error wraps
// chunk.ErrCorrupt, so a decompression bomb is a verification failure like any other. Decode
// does not hash; DecodeVerified decodes and then verifies against the CID (chunk.Verify), the one
// hash of the chunk on its way in.
//
//	enc, _ := zchunk.NewEncoder(zchunk.DefaultLevel)
//	stored, codec := enc.Encode(nil, data) // codec is chunk.CodecNone when zstd does not pay
//	v, err := zchunk.DecodeVerified(c, stored) // c.Codec, c.Length and c.CID from the manifest
//
// Cost per chunk: one zstd EncodeAll on the build side (the frame written in place after dst
// when dst has room), skipped for data whose sampled byte entropy is at least 7.5 bits
// (Incompressible: a pass over a sixteenth of a large chunk, over at least 4096 bytes of a
// small one, all of one up to 8 KiB); one DecodeAll into a buffer of exactly the chunk's length
// (no copy) and one sha256 on the fetch side; a dictionary adds one frame-header parse and,
// once per blob, the dictionary's parse and a decoder (DictOf caches 16). Encoders and the decoder are
// shared and safe for concurrent use.
package zchunk
