package resultcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// ref is one version an entry was stored under.
type ref struct {
	cell *cell
	v    uint64
}

// entry is one answer in the memory tier. It is immutable once stored.
type entry struct {
	db   string
	fp   uint64
	refs []ref // sorted by table name, "*" included
	data []byte
	ttl  time.Duration // for otter's expiry calculator
}

// entryOverhead estimates the bytes an entry costs besides its data: the
// entry, its refs, otter's node and hash table slot.
const entryOverhead = 256

func (e *entry) weight() uint32 {
	return uint32(len(e.data) + entryOverhead + len(e.refs)*16 + len(e.db))
}

// current reports whether every version the entry was stored under is still
// the local one.
func (e *entry) current() bool {
	for _, r := range e.refs {
		if r.cell.v.Load() != r.v {
			return false
		}
	}
	return true
}

// sameTables reports whether the entry depends on exactly tables (plus "*",
// which tables may or may not name; duplicates are fine). It allocates
// nothing.
func (e *entry) sameTables(tables []string) bool {
	for _, t := range tables {
		if !e.hasTable(t) {
			return false
		}
	}
	for _, r := range e.refs {
		if r.cell.table != StarTable && !contains(tables, r.cell.table) {
			return false
		}
	}
	return true
}

func (e *entry) hasTable(t string) bool {
	for _, r := range e.refs {
		if r.cell.table == t {
			return true
		}
	}
	return false
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// The Redis encoding of an entry, format version 1, all integers big-endian
// or unsigned varints:
//
//	"PC" 0x01                 magic and format version
//	uvarint len, bytes        boot id of the Redis the snapshot was taken under
//	uint64                    fingerprint
//	int64                     expiry, Unix nanoseconds
//	uvarint len, bytes        database
//	uvarint n                 number of tables, "*" included (1..maxTables)
//	n × (uvarint len, bytes, uvarint version)   sorted, distinct names
//	rest                      the answer's wire bytes
const (
	entryMagic0, entryMagic1 = 'P', 'C'
	entryFormat              = 1
	maxTables                = 1024
	maxName                  = 1 << 16
)

// ErrBadEntry is wrapped by the error of a Redis entry that cannot be
// decoded.
var ErrBadEntry = errors.New("resultcache: bad entry encoding")

// wireEntry is an entry as stored in Redis.
type wireEntry struct {
	boot     string
	fp       uint64
	expires  int64
	db       string
	tables   []string // sorted, distinct, "*" included
	versions []uint64
	data     []byte
}

// encodeEntry appends the encoding of e to dst.
func encodeEntry(dst []byte, e *wireEntry) []byte {
	dst = append(dst, entryMagic0, entryMagic1, entryFormat)
	dst = appendString(dst, e.boot)
	dst = binary.BigEndian.AppendUint64(dst, e.fp)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.expires))
	dst = appendString(dst, e.db)
	dst = binary.AppendUvarint(dst, uint64(len(e.tables)))
	for i, t := range e.tables {
		dst = appendString(dst, t)
		dst = binary.AppendUvarint(dst, e.versions[i])
	}
	return append(dst, e.data...)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeEntry decodes b. The returned data aliases b. It rejects anything
// malformed with an error wrapping ErrBadEntry, and allocates in proportion
// to len(b) at most.
func decodeEntry(b []byte) (*wireEntry, error) {
	d := decoder{b: b}
	if len(b) < 3 || b[0] != entryMagic0 || b[1] != entryMagic1 {
		return nil, fmt.Errorf("%w: no magic", ErrBadEntry)
	}
	if b[2] != entryFormat {
		return nil, fmt.Errorf("%w: format version %d", ErrBadEntry, b[2])
	}
	d.b = b[3:]
	e := &wireEntry{}
	e.boot = d.string()
	e.fp = d.uint64()
	e.expires = int64(d.uint64())
	e.db = d.string()
	n := d.uvarint()
	if d.err == nil && (n == 0 || n > maxTables || n > uint64(len(d.b))) {
		d.fail("table count %d", n)
	}
	if d.err != nil {
		return nil, d.err
	}
	e.tables = make([]string, 0, n)
	e.versions = make([]uint64, 0, n)
	star := false
	for i := uint64(0); i < n && d.err == nil; i++ {
		t, v := d.string(), d.uvarint()
		if d.err != nil {
			break
		}
		if i > 0 && t <= e.tables[i-1] {
			d.fail("tables not sorted and distinct")
			break
		}
		star = star || t == StarTable
		e.tables = append(e.tables, t)
		e.versions = append(e.versions, v)
	}
	if d.err == nil && !star {
		d.fail("no %q table", StarTable)
	}
	if d.err != nil {
		return nil, d.err
	}
	e.data = d.b
	return e, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadEntry, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint64() uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail("truncated")
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > maxName || n > uint64(len(d.b)) {
		d.fail("string length %d", n)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
