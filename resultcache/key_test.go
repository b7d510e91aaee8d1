package resultcache_test

import (
	"crypto/sha256"
	"testing"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

func TestKeyBuilder(t *testing.T) {
	var b resultcache.KeyBuilder // zero value
	b.AddString("ab")
	b.AddString("c")
	k1 := b.Sum()
	if k1 != b.Sum() {
		t.Error("Sum changed the state")
	}
	b.Reset()
	b.AddString("a")
	b.AddString("bc")
	if b.Sum() == k1 {
		t.Error(`("ab","c") and ("a","bc") collide: parts are not length-prefixed`)
	}
	b.Reset()
	b.Add([]byte("ab"))
	b.Add([]byte("c"))
	if b.Sum() != k1 {
		t.Error("Add and AddString of the same bytes differ")
	}
	long := make([]byte, 1000) // longer than the string scratch buffer
	for i := range long {
		long[i] = byte(i)
	}
	b.Reset()
	b.Add(long)
	k2 := b.Sum()
	b.Reset()
	b.AddString(string(long))
	if b.Sum() != k2 {
		t.Error("AddString of a long string differs from Add")
	}
	b.Reset()
	b.AddUint32(7)
	b.AddUint64(7)
	if b.Sum() == (resultcache.Key{}) || b.Sum() == resultcache.Key(sha256.Sum256(nil)) {
		t.Error("integers added nothing")
	}
	if got := len(k1.String()); got != 64 {
		t.Errorf("Key.String has %d characters, want 64", got)
	}
}

func BenchmarkKeyBuilder(b *testing.B) {
	var kb resultcache.KeyBuilder
	param := []byte("some parameter value")
	b.ReportAllocs()
	for b.Loop() {
		kb.Reset()
		kb.AddUint64(0x1234_5678_9abc_def0)
		kb.AddString("appdb")
		kb.AddString("app_user")
		kb.AddString(`"$user", public`)
		kb.Add(param)
		kb.AddUint32(1)
		_ = kb.Sum()
	}
}

func BenchmarkGetMemoryHit(b *testing.B) {
	c, err := resultcache.New(resultcache.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	tables := []string{"users", "orders"}
	k := key("q")
	put(c, "app", tables, k, "a cached answer of a few bytes")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := c.Get(ctx, "app", k, tables); !ok {
			b.Fatal("miss")
		}
	}
}
