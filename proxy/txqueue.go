package proxy

// The response queue of a transaction-mode session. Every message sent to
// the backend that earns an answer has an entry, in order, so the relay
// knows which answer belongs to which message: it can swallow the answers
// to messages pgsidecar added (a lazy Parse, a Close of an evicted
// statement), answer messages it did not send (a Parse of a statement the
// backend already has), and tell when the backend owes nothing more.

// respAction says what happens to an entry's answer.
type respAction uint8

const (
	// forward the backend's answer to the client.
	actForward respAction = iota
	// swallow the backend's answer: the message was pgsidecar's own. An
	// error is still forwarded: it is the client's statement that failed.
	actSwallow
	// synth: no message went to the backend; when the entry reaches the
	// head of the queue, pgsidecar writes msg to the client itself.
	actSynth
)

// respEntry is one message awaiting its answer.
type respEntry struct {
	// kind is the frontend message type ('P', 'B', 'E', 'C', 'S', 'Q',
	// 'F'), 'D' for a Describe of a statement and 'd' of a portal; for a
	// synthetic entry, the type of msg, or 'Z' for a ReadyForQuery whose
	// status is the session's when it is written.
	kind   byte
	action respAction
	msg    []byte // actSynth: the message to write (except 'Z')

	// Undo on failure: a Parse that the server ignored or refused did not
	// create the client's statement (clientName, def) nor the server's
	// (server).
	clientName string
	def        *stmtDef
	server     string

	// capture: the answer is def's result shape, as the client learns it.
	// check: the answer is the shape of def prepared anew, which must
	// match what the client knows. retry: the Bind's batch may be run
	// again if the server refuses the statement's cached plan.
	capture, check, retry bool
	// unnamedParse: the client's own Parse of its unnamed statement.
	unnamedParse bool
	// writes: what the segment this Sync, Query or FunctionCall ends may
	// write (result cache); rollback: the Query is a lone ROLLBACK.
	writes   *writeSet
	rollback bool
	// replayAt is where the entry's client message starts in the copy of
	// a batch kept for a retry; -1 when there is none.
	replayAt int
}

// completes reports whether a backend message of type t ends the answer to
// an entry of kind k. An ErrorResponse ends any extended-protocol entry.
func completes(k, t byte) bool {
	switch k {
	case 'P':
		return t == '1' || t == 'E'
	case 'B':
		return t == '2' || t == 'E'
	case 'C':
		return t == '3' || t == 'E'
	case 'D', 'd':
		return t == 'T' || t == 'n' || t == 'E'
	case 'E':
		return t == 'C' || t == 'I' || t == 's' || t == 'E'
	case 'S', 'Q', 'F':
		return t == 'Z'
	}
	return false
}

// extended reports whether entries of kind k belong to an extended-protocol
// batch, which an error aborts until the next Sync.
func extended(k byte) bool {
	switch k {
	case 'P', 'B', 'C', 'D', 'd', 'E':
		return true
	}
	return false
}

// respQueue is a FIFO of entries. It reuses its backing array, so a
// session in a steady state does not allocate.
type respQueue struct {
	items []respEntry
	head  int
}

func (q *respQueue) len() int { return len(q.items) - q.head }

func (q *respQueue) push(e respEntry) { q.items = append(q.items, e) }

func (q *respQueue) front() *respEntry { return &q.items[q.head] }

func (q *respQueue) at(i int) *respEntry { return &q.items[q.head+i] }

func (q *respQueue) pop() respEntry {
	e := q.items[q.head]
	q.items[q.head] = respEntry{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return e
}

// removeAt deletes the i-th entry from the front.
func (q *respQueue) removeAt(i int) {
	j := q.head + i
	copy(q.items[j:], q.items[j+1:])
	q.items[len(q.items)-1] = respEntry{}
	q.items = q.items[:len(q.items)-1]
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
}
