package protocol

import "testing"

// The benchmarks measure the hot path of the service and the simulator: a
// check-in with 10 installed profiles and its response with 10 desired
// profiles. scripts/bench-protocol runs them.

func BenchmarkEncodeCheckIn(b *testing.B) {
	in, _ := benchCheckIn(10)
	benchEncode(b, in)
}

func BenchmarkDecodeCheckIn(b *testing.B) {
	in, _ := benchCheckIn(10)
	benchDecode(b, in)
}

func BenchmarkEncodeCheckInResponse(b *testing.B) {
	_, out := benchCheckIn(10)
	benchEncode(b, out)
}

func BenchmarkDecodeCheckInResponse(b *testing.B) {
	_, out := benchCheckIn(10)
	benchDecode(b, out)
}

func benchEncode(b *testing.B, env Envelope) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(env); err != nil {
			b.Fatal(err)
		}
	}
}

func benchDecode(b *testing.B, env Envelope) {
	data, err := Encode(env)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
