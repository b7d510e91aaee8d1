package pool

import "container/list"

// Statements records which prepared statements exist on one backend
// connection, in least-recently-used order, so a transaction-mode proxy can
// prepare a statement lazily on whichever backend serves it and close the
// least recently used one when the connection holds too many.
//
// The names are the proxy's; the pool only keeps the record and forgets it
// when the reset query runs (DISCARD ALL drops every prepared statement). A
// Statements belongs to the holder of its Conn.
type Statements struct {
	max   int
	order *list.List // of string, most recently used first
	index map[string]*list.Element
	stale map[string]bool // prepared on the server, but unusable there
	// shapes records a statement's result shape (a hash of its
	// description) once the holder has seen the server describe it.
	shapes map[string]uint64
}

// SetShape records the result shape of name as the server described it.
func (s *Statements) SetShape(name string, shape uint64) {
	if _, ok := s.index[name]; !ok {
		return
	}
	if s.shapes == nil {
		s.shapes = make(map[string]uint64)
	}
	s.shapes[name] = shape
}

// Shape returns the recorded result shape of name, if any.
func (s *Statements) Shape(name string) (uint64, bool) {
	v, ok := s.shapes[name]
	return v, ok
}

// NewStatements returns an empty record holding at most max names (no
// bound when max <= 0). The pool makes one for every connection; the
// constructor is exported for tests of its users.
func NewStatements(max int) *Statements { return newStatements(max) }

func newStatements(max int) *Statements {
	return &Statements{max: max, order: list.New(), index: make(map[string]*list.Element)}
}

// Len is the number of statements recorded.
func (s *Statements) Len() int { return len(s.index) }

// Has reports whether name is prepared and usable, and marks it recently
// used.
func (s *Statements) Has(name string) bool {
	e, ok := s.index[name]
	if ok {
		s.order.MoveToFront(e)
	}
	return ok && !s.stale[name]
}

// MarkStale records that name exists on the server but must be closed and
// prepared again before use (the server refused its cached plan after a
// schema change). Has reports false for it until it is added again.
func (s *Statements) MarkStale(name string) {
	if _, ok := s.index[name]; !ok {
		return
	}
	if s.stale == nil {
		s.stale = make(map[string]bool)
	}
	s.stale[name] = true
	delete(s.shapes, name)
}

// Orphan records that name exists on the server although the record does
// not hold it (a Close of it was skipped after an error): like a stale
// statement, it must be closed before it is prepared again.
func (s *Statements) Orphan(name string) {
	if s.stale == nil {
		s.stale = make(map[string]bool)
	}
	s.stale[name] = true
}

// MarkAllStale marks every recorded statement stale: a DEALLOCATE ALL or
// DISCARD ALL may or may not have dropped them, so each is closed (which
// is no error if it is gone) before its next Parse.
func (s *Statements) MarkAllStale() {
	for name := range s.index {
		s.MarkStale(name)
	}
}

// Stale reports whether name was marked stale.
func (s *Statements) Stale(name string) bool { return s.stale[name] }

// Add records name as prepared. When that makes the record exceed its
// capacity it returns the least recently used name, which the caller must
// close on the server; keep names in use by the current batch with
// protect: a name protect reports true for is never evicted.
func (s *Statements) Add(name string, protect func(string) bool) (evict string, ok bool) {
	if e, found := s.index[name]; found {
		s.order.MoveToFront(e)
		delete(s.stale, name)
		return "", false
	}
	s.index[name] = s.order.PushFront(name)
	if s.max <= 0 || len(s.index) <= s.max {
		return "", false
	}
	for e := s.order.Back(); e != nil; e = e.Prev() {
		n := e.Value.(string)
		if n == name || (protect != nil && protect(n)) {
			continue
		}
		s.order.Remove(e)
		delete(s.index, n)
		delete(s.stale, n)
		delete(s.shapes, n)
		return n, true
	}
	return "", false
}

// Remove forgets name (it was closed, or its Parse failed).
func (s *Statements) Remove(name string) {
	if e, ok := s.index[name]; ok {
		s.order.Remove(e)
		delete(s.index, name)
		delete(s.stale, name)
		delete(s.shapes, name)
	}
}

// Clear forgets every statement (DEALLOCATE ALL or DISCARD ALL ran).
func (s *Statements) Clear() {
	s.order.Init()
	clear(s.index)
	clear(s.stale)
	clear(s.shapes)
}
