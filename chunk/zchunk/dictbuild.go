// The history selection below is github.com/klauspost/compress/dict's buildDict (v1.20.1,
// Copyright 2023+ Klaus Post, BSD-style licence: the module's LICENSE), made deterministic: the
// original ranks hashes read out of Go maps, whose order changes from run to run, so the same
// samples gave a different dictionary (and a different image digest) on every build. Here every
// slice taken from a map is put in hash order before it is sorted, every sort breaks ties by hash,
// and the one "any key" pick takes the smallest. Debug output and the S2 and raw formats are
// dropped; hashes are of 6 bytes.

package zchunk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/klauspost/compress/zstd"
)

const dictHashBytes = 6

func dictHash(b []byte) uint32 {
	var t8 [8]byte
	copy(t8[:], b)
	const prime6bytes = 227718039650203
	return uint32(((binary.LittleEndian.Uint64(t8[:]) << (64 - 48)) * prime6bytes) >> ((64 - 32) & 63))
}

type dictMatch struct {
	hash   uint32
	n      uint32
	offset int64
}

type dictMatchValue struct {
	value       []byte
	followBy    map[uint32]uint32
	preceededBy map[uint32]uint32
}

// sortedKeys returns m's keys in increasing order: the one order a map is walked in here.
func sortedKeys[V any](m map[uint32]V) []uint32 {
	ks := make([]uint32, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// buildZstdDict builds a zstd dictionary of at most wantLen bytes of history from input.
func buildZstdDict(input [][]byte, wantLen int, id uint32, level zstd.EncoderLevel) ([]byte, error) {
	const hashBytes = dictHashBytes
	if len(input) == 0 {
		return nil, errors.New("no input provided")
	}
	matches := make(map[uint32]uint32)
	offsets := make(map[uint32]int64)
	var total uint64
	found := make(map[uint32]struct{})
	for _, b := range input {
		clear(found)
		for i := range b {
			rem := b[i:]
			if len(rem) < 8 {
				break
			}
			h := dictHash(rem)
			if _, ok := found[h]; ok {
				continue // only the first occurrence in an input counts
			}
			matches[h]++
			offsets[h] += int64(i)
			total++
			found[h] = struct{}{}
		}
	}
	if len(matches) == 0 {
		return nil, fmt.Errorf("input too short: %w", ErrNoDict)
	}
	threshold := uint32(total / uint64(len(matches)))
	sorted := make([]dictMatch, 0, len(matches)/2)
	for _, k := range sortedKeys(matches) {
		if v := matches[k]; v > threshold {
			sorted = append(sorted, dictMatch{hash: k, n: v, offset: offsets[k]})
		}
	}
	if len(sorted) == 0 {
		return nil, fmt.Errorf("nothing repeats across the samples: %w", ErrNoDict) // e.g. every sample one run of a byte
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		// Group very similar counts together and emit low offsets first: keeps together strings
		// that are very similar.
		deltaN := int(sorted[i].n) - int(sorted[j].n)
		if deltaN < 0 {
			deltaN = -deltaN
		}
		if uint32(deltaN) < sorted[i].n/32 {
			return sorted[i].offset < sorted[j].offset
		}
		return sorted[i].n > sorted[j].n
	})
	if len(sorted) > wantLen {
		sorted = sorted[:wantLen]
	}
	lowestOcc := sorted[len(sorted)-1].n

	wantMatches := make(map[uint32]uint32, len(sorted))
	for _, v := range sorted {
		wantMatches[v.hash] = v.n
	}
	output := make(map[uint32]dictMatchValue, len(sorted))
	for _, b := range input {
		for i := range b {
			rem := b[i:]
			if len(rem) < 8 {
				break
			}
			var prev []byte
			if i > hashBytes {
				prev = b[i-hashBytes:]
			}
			h := dictHash(rem)
			if _, ok := wantMatches[h]; !ok {
				continue
			}
			mv := output[h]
			if len(mv.value) == 0 {
				mv.value = append([]byte(nil), rem[:hashBytes]...)
			}
			if mv.followBy == nil {
				mv.followBy = make(map[uint32]uint32, 4)
				mv.preceededBy = make(map[uint32]uint32, 4)
			}
			if len(rem) > hashBytes+8 {
				if hNext := dictHash(rem[hashBytes:]); wantMatches[hNext] != 0 {
					mv.followBy[hNext]++
				}
			}
			if len(prev) >= 8 {
				if hPrev := dictHash(prev); wantMatches[hPrev] != 0 {
					mv.preceededBy[hPrev]++
				}
			}
			output[h] = mv
		}
	}
	byCount := func(ms []dictMatch) func(i, j int) bool {
		return func(i, j int) bool {
			if ms[i].n != ms[j].n {
				return ms[i].n > ms[j].n
			}
			if ms[i].offset != ms[j].offset {
				return ms[i].offset > ms[j].offset
			}
			return ms[i].hash < ms[j].hash
		}
	}
	dst := make([][]byte, 0, wantLen/hashBytes)
	added := 0
	var firstOffsets []int
	for _, e := range sorted {
		if added > wantLen {
			break
		}
		m, ok := output[e.hash]
		if !ok {
			continue // already added
		}
		minN := max(e.n/uint32(hashBytes)/4, lowestOcc)
		tmp := make([]byte, 0, hashBytes*2)
		var sortedPrev []dictMatch
		for _, k := range sortedKeys(m.preceededBy) {
			if _, ok := output[k]; ok && m.preceededBy[k] >= minN {
				sortedPrev = append(sortedPrev, dictMatch{hash: k, n: m.preceededBy[k]})
			}
		}
		if len(sortedPrev) > 0 {
			sort.Slice(sortedPrev, byCount(sortedPrev))
			tmp = append(tmp, output[sortedPrev[0].hash].value...)
		}
		tmp = append(tmp, m.value...)
		delete(output, e.hash)

		var sortedFollow []dictMatch
		for {
			sortedFollow = sortedFollow[:0]
			for _, k := range sortedKeys(m.followBy) {
				if _, ok := output[k]; ok {
					sortedFollow = append(sortedFollow, dictMatch{hash: k, n: m.followBy[k], offset: offsets[k]})
				}
			}
			if len(sortedFollow) == 0 {
				// Step back two bytes: a small gain for longer hashes.
				const stepBack = 2
				if len(tmp) < hashBytes+stepBack {
					break
				}
				m, ok = output[dictHash(tmp[len(tmp)-hashBytes-stepBack:])]
				if !ok || len(m.followBy) == 0 {
					break
				}
				var foundV []byte
				for _, k := range sortedKeys(m.followBy) {
					if v, ok := output[k]; ok {
						foundV = v.value
						break
					}
				}
				if foundV == nil {
					break
				}
				tmp = tmp[:len(tmp)-stepBack]
				continue
			}
			sort.Slice(sortedFollow, byCount(sortedFollow))
			nh := sortedFollow[0].hash
			stopAfter := sortedFollow[0].n < minN
			m, ok = output[nh]
			if !ok {
				break
			}
			if len(tmp) > 0 {
				// Delete all hashes in the current string, to avoid stuttering.
				var toDel [16 + 8]byte
				copy(toDel[:], tmp[len(tmp)-hashBytes:])
				copy(toDel[hashBytes:], m.value)
				for i := range toDel[:hashBytes*2] {
					delete(output, dictHash(toDel[i:]))
				}
			}
			tmp = append(tmp, m.value...)
			if stopAfter {
				break
			}
		}
		// Delete substrings already added.
		if len(tmp) > hashBytes {
			for j := range tmp[:len(tmp)-hashBytes+1] {
				delete(output, dictHash(tmp[j:]))
			}
		}
		dst = append(dst, tmp)
		added += len(tmp)
		if len(firstOffsets) < 3 {
			probe := tmp[:min(len(tmp), 16)]
			offCnt := make(map[int]int, len(input))
			for _, b := range input {
				if off := bytes.Index(b, probe); off >= 0 {
					offCnt[off]++
				}
			}
			for _, off := range firstOffsets {
				delete(offCnt, off-added)
			}
			maxCnt, maxOffset := 0, 0
			for k, v := range offCnt { // the result is order-free: the largest count, then offset
				if v > maxCnt || v == maxCnt && k > maxOffset {
					maxCnt, maxOffset = v, k
				}
			}
			if maxCnt > 1 {
				firstOffsets = append(firstOffsets, maxOffset+added)
			}
		}
	}
	written := 0
	for i, w := range dst {
		if len(w)+written > wantLen {
			w = w[:wantLen-written]
		}
		dst[i] = w
		written += len(w)
		if written >= wantLen {
			dst = dst[:i+1]
			break
		}
	}
	var out bytes.Buffer
	for i := range dst { // in reverse: the most common last, nearest the data
		out.Write(dst[len(dst)-i-1])
	}
	offsetsZstd := [3]int{1, 4, 8}
	for i, off := range firstOffsets {
		if i >= 3 || off == 0 || off >= out.Len() {
			break
		}
		offsetsZstd[i] = off
	}
	return zstd.BuildDict(zstd.BuildDictOptions{
		ID:       id,
		Contents: input,
		History:  out.Bytes(),
		Offsets:  offsetsZstd,
		Level:    level,
	})
}
