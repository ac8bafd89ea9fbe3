//go:build race

package p2p

// raceEnabled scales cluster tests down: the race detector makes every goroutine ~10× slower.
const raceEnabled = true
