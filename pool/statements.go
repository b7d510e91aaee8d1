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

// Has reports whether name is prepared, and marks it recently used.
func (s *Statements) Has(name string) bool {
	e, ok := s.index[name]
	if ok {
		s.order.MoveToFront(e)
	}
	return ok
}

// Add records name as prepared. When that makes the record exceed its
// capacity it returns the least recently used name, which the caller must
// close on the server; keep names in use by the current batch with
// protect: a name protect reports true for is never evicted.
func (s *Statements) Add(name string, protect func(string) bool) (evict string, ok bool) {
	if e, found := s.index[name]; found {
		s.order.MoveToFront(e)
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
		return n, true
	}
	return "", false
}

// Remove forgets name (it was closed, or its Parse failed).
func (s *Statements) Remove(name string) {
	if e, ok := s.index[name]; ok {
		s.order.Remove(e)
		delete(s.index, name)
	}
}

// Clear forgets every statement (DEALLOCATE ALL or DISCARD ALL ran).
func (s *Statements) Clear() {
	s.order.Init()
	clear(s.index)
}
