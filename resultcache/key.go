package resultcache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
)

// Key identifies one cached answer: a SHA-256 over everything that changes
// the answer (see KeyBuilder). The proxy decides what goes in; this package
// never looks inside.
type Key [32]byte

// String is the key in lower-case hex, as used in Redis key names.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// KeyBuilder computes a Key as SHA-256 over a sequence of parts, each
// prefixed with its length, so that ("ab", "c") and ("a", "bc") differ.
// Every Add* call is one part.
//
// The zero value is ready to use. A KeyBuilder is reusable: Reset starts a
// new key without allocating. It is not safe for concurrent use.
type KeyBuilder struct {
	h       hash.Hash
	scratch [64]byte // length prefixes, integers and string chunks
	sum     [sha256.Size]byte
}

// Reset starts a new key.
func (b *KeyBuilder) Reset() {
	if b.h == nil {
		b.h = sha256.New()
		return
	}
	b.h.Reset()
}

func (b *KeyBuilder) init() {
	if b.h == nil {
		b.h = sha256.New()
	}
}

func (b *KeyBuilder) prefix(n int) {
	binary.BigEndian.PutUint64(b.scratch[:8], uint64(n))
	b.h.Write(b.scratch[:8])
}

// Add adds p as one part. A nil and an empty p are the same part.
func (b *KeyBuilder) Add(p []byte) {
	b.init()
	b.prefix(len(p))
	b.h.Write(p)
}

// AddString adds s as one part, the same part as Add([]byte(s)), without
// converting it.
func (b *KeyBuilder) AddString(s string) {
	b.init()
	b.prefix(len(s))
	for len(s) > 0 {
		n := copy(b.scratch[:], s)
		b.h.Write(b.scratch[:n])
		s = s[n:]
	}
}

// AddUint32 adds v as one 4-byte big-endian part.
func (b *KeyBuilder) AddUint32(v uint32) {
	b.init()
	b.prefix(4)
	binary.BigEndian.PutUint32(b.scratch[:4], v)
	b.h.Write(b.scratch[:4])
}

// AddUint64 adds v as one 8-byte big-endian part (a fingerprint, say).
func (b *KeyBuilder) AddUint64(v uint64) {
	b.init()
	b.prefix(8)
	binary.BigEndian.PutUint64(b.scratch[:8], v)
	b.h.Write(b.scratch[:8])
}

// Sum returns the key of the parts added since the last Reset. It does not
// change the builder's state.
func (b *KeyBuilder) Sum() Key {
	b.init()
	var k Key
	copy(k[:], b.h.Sum(b.sum[:0]))
	return k
}
