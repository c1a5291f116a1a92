//go:build race

package main

// raceDetector is true under go test -race, which slows the simulator and
// the service several times: too much for a run on a clock 3,600 times
// real time against a broker in another process.
const raceDetector = true
