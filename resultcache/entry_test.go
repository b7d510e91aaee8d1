package resultcache

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func sampleEntry() *wireEntry {
	return &wireEntry{
		boot: "b1", fp: 42, expires: 1_700_000_000_000_000_000, db: "app",
		tables: []string{"*", "orders", "users"}, versions: []uint64{1, 300, 1 << 40},
		data: []byte("wire bytes"),
	}
}

func TestEntryRoundTrip(t *testing.T) {
	e := sampleEntry()
	got, err := decodeEntry(encodeEntry(nil, e))
	if err != nil {
		t.Fatal(err)
	}
	if got.boot != e.boot || got.fp != e.fp || got.expires != e.expires || got.db != e.db ||
		!slices.Equal(got.tables, e.tables) || !slices.Equal(got.versions, e.versions) || !bytes.Equal(got.data, e.data) {
		t.Errorf("round trip: %+v, want %+v", got, e)
	}
}

func TestEntryDecodeRejects(t *testing.T) {
	good := encodeEntry(nil, sampleEntry())
	noStar := sampleEntry()
	noStar.tables, noStar.versions = []string{"a", "b"}, []uint64{1, 2}
	unsorted := sampleEntry()
	unsorted.tables = []string{"*", "users", "orders"}
	dup := sampleEntry()
	dup.tables = []string{"*", "users", "users"}
	cases := map[string][]byte{
		"empty":       nil,
		"magic":       append([]byte("XX"), good[2:]...),
		"format":      append([]byte{'P', 'C', 9}, good[3:]...),
		"truncated":   good[:20],
		"no star":     encodeEntry(nil, noStar),
		"unsorted":    encodeEntry(nil, unsorted),
		"duplicate":   encodeEntry(nil, dup),
		"huge string": append([]byte{'P', 'C', 1}, 0xff, 0xff, 0xff, 0xff, 0x0f),
	}
	for name, b := range cases {
		if _, err := decodeEntry(b); !errors.Is(err, ErrBadEntry) {
			t.Errorf("%s: err %v, want ErrBadEntry", name, err)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(nil, sampleEntry()))
	f.Add([]byte("PC\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		again, err := decodeEntry(encodeEntry(nil, e))
		if err != nil || again.db != e.db || !slices.Equal(again.tables, e.tables) || !bytes.Equal(again.data, e.data) {
			t.Fatalf("re-encoding a decoded entry: %v", err)
		}
	})
}
