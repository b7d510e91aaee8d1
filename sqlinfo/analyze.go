package sqlinfo

import (
	"cmp"
	"errors"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Table names a relation as the text writes it. Schema is "" when the name is
// unqualified (a catalog name, db.schema.t, is dropped: it can only be the
// current database). Names are as PostgreSQL folds them: unquoted identifiers
// are lower-cased, quoted ones kept as written.
//
// A name is not a relation: the caller resolves it on the backend, with the
// session's search_path. Views, partitions and inheritance children are the
// caller's to expand too: a write to a partition changes what its parent
// shows, a write to a table changes every view over it, a write to a view
// writes its base tables.
type Table struct{ Schema, Name string }

// Func names a function, operator or type as the text writes it (Schema ""
// when unqualified), folded as Table names are. Names the grammar qualifies
// itself keep that qualification: pg_query writes int as pg_catalog.int4 and
// SYSTEM_USER as pg_catalog.system_user.
type Func struct{ Schema, Name string }

// String returns schema.name, or name when unqualified, without quoting.
func (t Table) String() string { return qualified(t.Schema, t.Name) }

// String returns schema.name, or name when unqualified, without quoting.
func (f Func) String() string { return qualified(f.Schema, f.Name) }

func qualified(schema, name string) string {
	if schema == "" {
		return name
	}
	return schema + "." + name
}

// Kind is what sort of statement a Statement is.
type Kind uint8

// Values of Kind. String gives each a short stable lower-case name.
const (
	// KindOther: anything not below: PREPARE, EXECUTE, DEALLOCATE, DECLARE,
	// FETCH, MOVE, CLOSE, LISTEN, UNLISTEN, NOTIFY, LOCK, VACUUM, ANALYZE,
	// CLUSTER, REINDEX, CHECKPOINT, LOAD, ALTER SYSTEM, and statements this
	// package does not know.
	KindOther Kind = iota
	// KindSelect: SELECT (SELECT INTO too), VALUES, TABLE, set operations.
	KindSelect
	KindInsert
	KindUpdate
	KindDelete
	KindMerge
	// KindCopyFrom: COPY table FROM.
	KindCopyFrom
	// KindCopyTo: COPY table TO, COPY (query) TO.
	KindCopyTo
	KindTruncate
	// KindDDL: statements that change the catalog: CREATE, ALTER, DROP,
	// GRANT, REVOKE, COMMENT, SECURITY LABEL, REFRESH MATERIALIZED VIEW,
	// CREATE TABLE AS, REASSIGN OWNED, ...
	KindDDL
	// KindTransaction: BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT,
	// RELEASE, PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED.
	KindTransaction
	// KindSet: SET, RESET, SHOW, DISCARD, SET CONSTRAINTS.
	KindSet
	KindCall
	KindDo
	KindExplain
)

var kindNames = [...]string{
	KindOther:       "other",
	KindSelect:      "select",
	KindInsert:      "insert",
	KindUpdate:      "update",
	KindDelete:      "delete",
	KindMerge:       "merge",
	KindCopyFrom:    "copy_from",
	KindCopyTo:      "copy_to",
	KindTruncate:    "truncate",
	KindDDL:         "ddl",
	KindTransaction: "transaction",
	KindSet:         "set",
	KindCall:        "call",
	KindDo:          "do",
	KindExplain:     "explain",
}

// String returns the kind's name, usable as a metric label value.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "other"
}

// Statement is what one statement of a text does, as far as its text tells.
//
// The lists are sorted (by schema, then name) and hold each name once; nil
// when empty. The analysis errs on the safe side: what it cannot decide comes
// out as a write (WritesUnknown) and as a reason not to cache.
type Statement struct {
	Kind Kind
	// ReadOnly: the statement by itself changes nothing outside its session:
	// no table, sequence, catalog, row lock, notification or server file. The
	// functions and operators it calls may still do anything (nextval, a
	// VOLATILE user function): check their volatility.
	ReadOnly bool
	// Reads: relations read: FROM and JOIN items, subqueries anywhere, CTE
	// bodies, UPDATE ... FROM, DELETE ... USING, the MERGE source, COPY TO's
	// table, the tables of an EXPLAINed, PREPAREd or DECLAREd query. A name
	// that refers to a CTE in scope is not a relation and is left out. A
	// DML target is listed in Writes only, even when the statement also
	// reads it.
	Reads []Table
	// Writes: relations whose data, or whose visibility to some role, the
	// statement may change, named in the text: INSERT, UPDATE, DELETE and
	// MERGE targets (inside CTEs too), SELECT INTO and CREATE TABLE AS
	// targets, COPY FROM's table, TRUNCATE; and the relations of DDL that
	// names them: CREATE, ALTER and DROP of tables, views, materialized
	// views, sequences and indexes, partitions attached or detached, GRANT
	// and REVOKE on tables, CREATE/ALTER/DROP POLICY, REFRESH MATERIALIZED
	// VIEW, CREATE INDEX. Writes done by triggers, rules, foreign key
	// actions and functions are not listed: the caller must learn those from
	// the catalog.
	Writes []Table
	// WritesUnknown: the statement may write relations it does not name: DO,
	// CALL, EXECUTE, COMMIT PREPARED, LOAD, TRUNCATE or DROP ... CASCADE,
	// DDL on functions, types, schemas, roles, extensions, databases, rules,
	// triggers, CREATE OR REPLACE VIEW, ALTER ... RENAME, GRANT ON ALL
	// TABLES IN SCHEMA, any write to a system catalog, and any statement this
	// package does not know.
	WritesUnknown bool
	// Catalog: the statement may change the catalog (any DDL, SELECT INTO, a
	// write to a system catalog, an unknown statement), so function
	// volatility, relation kinds and what names resolve to may change.
	Catalog bool
	// Funcs: every function (and procedure) called anywhere, aggregates and
	// window functions included.
	Funcs []Func
	// Operators: the operators written, with OPERATOR(schema.op) or bare,
	// and those that IN (=, <>), LIKE (~~ ...), BETWEEN (>=, <= or <, >),
	// NULLIF and IS DISTINCT FROM (=), x op ANY/ALL and ORDER BY ... USING
	// stand for. Operators implied by sorting, grouping, DISTINCT, set
	// operations, joins, CASE x WHEN and GREATEST/LEAST are not listed.
	Operators []Func
	// Types: type names written in casts, typed literals and column
	// definition lists (and in DDL).
	Types []Func
	// Locking: FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE or FOR KEY SHARE
	// anywhere.
	Locking bool
	// ModifyingCTE: a WITH item whose body is INSERT, UPDATE, DELETE or
	// MERGE.
	ModifyingCTE bool
	// SelectInto: SELECT ... INTO.
	SelectInto bool
	// ValueFuncs: CURRENT_DATE, CURRENT_TIME[STAMP], LOCALTIME[STAMP],
	// CURRENT_ROLE, CURRENT_USER, USER, SESSION_USER, CURRENT_CATALOG or
	// CURRENT_SCHEMA anywhere: SQL-standard value functions that are not
	// function calls, so a volatility check on Funcs cannot see them.
	ValueFuncs bool
	// TimeLiteral: a string constant anywhere holds now, today, tomorrow or
	// yesterday (see HasTimeWord): cast to a date/time type, such a literal
	// is the current time with no function call ('now'::timestamptz).
	TimeLiteral bool
	// SystemTables: a relation in pg_catalog, information_schema or
	// pg_toast, an unqualified relation whose name starts with pg_
	// (pg_catalog is searched first), or a cast to an OID alias type
	// (regclass, regproc, ...), which looks names up in the catalog.
	SystemTables bool
	// TempTables: a relation qualified with pg_temp (or pg_temp_N): one
	// session's table, never to be shared through a cache. Unqualified names
	// can resolve to temporary tables too: the caller must check.
	TempTables bool
	// TableSample: TABLESAMPLE, which picks rows at random.
	TableSample bool
	// Fingerprint is pg_query's fingerprint of this statement. Like every
	// pg_query fingerprint it ignores constant values: it identifies a
	// statement's shape, not its result.
	Fingerprint uint64
}

// Reasons a text is not cacheable, the values of Info.NotCacheable. They are
// short, stable snake_case strings meant as metric label values; the order
// below is the order in which Analyze looks for them.
const (
	ReasonUnparsed           = "unparsed"
	ReasonEmpty              = "empty"
	ReasonMultipleStatements = "multiple_statements"
	ReasonExplain            = "explain"
	ReasonNotSelect          = "not_select"
	ReasonSelectInto         = "select_into"
	ReasonModifyingCTE       = "modifying_cte"
	ReasonLockingClause      = "locking_clause"
	// ReasonNotReadOnly: a SELECT that is not ReadOnly for a reason not
	// listed above (none is known; a safety net).
	ReasonNotReadOnly   = "not_read_only"
	ReasonValueFunction = "value_function"
	ReasonTimeLiteral   = "time_literal"
	ReasonSystemTable   = "system_table"
	ReasonTempTable     = "temp_table"
	ReasonTableSample   = "tablesample"
	ReasonNoCacheHint   = "nocache_hint"
)

// Reasons returns every value Info.NotCacheable can take besides "", in the
// order Analyze checks them, for instance to initialise metric series. The
// slice is new on every call.
func Reasons() []string {
	return []string{
		ReasonUnparsed, ReasonEmpty, ReasonMultipleStatements, ReasonExplain, ReasonNotSelect,
		ReasonSelectInto, ReasonModifyingCTE, ReasonLockingClause, ReasonNotReadOnly,
		ReasonValueFunction, ReasonTimeLiteral, ReasonSystemTable, ReasonTempTable,
		ReasonTableSample, ReasonNoCacheHint,
	}
}

// Info is the analysis of one query text, for the result cache and for
// invalidation.
//
// An Info returned by a Classifier is shared between callers: treat it, and
// every slice in it, as read-only.
type Info struct {
	// Statements: one per statement of the text, in order; empty when the
	// text holds none (only comments or semicolons) or is Unparsed.
	Statements []Statement
	// Fingerprint is pg_query's fingerprint of the whole text, 0 when
	// Unparsed or empty. It ignores constant values, so "... WHERE id = 1"
	// and "... WHERE id = 2" share it: it is not a cache key by itself.
	Fingerprint uint64
	// Hints: the pgsidecar comment hints of the text (see Hints).
	Hints Hints
	// Unparsed: the parser rejected the text (see the package
	// documentation), or it holds a NUL byte, which no server accepts in a
	// query string. Statements is empty; WritesUnknown and Catalog are
	// set. A text the server rejected too wrote nothing: a caller that waits
	// for the server's answer may use that.
	Unparsed bool
	// NotCacheable is the first Reason* found why the text can never be
	// answered from the cache, or "" when it is a candidate: a single
	// SELECT (VALUES, TABLE) that is ReadOnly, with none of the flags above
	// set, and no nocache hint. A SELECT of no table (SELECT 1, SELECT
	// $1::int) is a candidate. The caller must still check, on the backend,
	// that every function, operator and cast is IMMUTABLE (now() is only
	// STABLE), what each name resolves to (a view over volatile functions, a
	// temporary table, a sequence, a foreign table, a table with row-level
	// security, whose policies may read other tables), and that no text
	// parameter bound to a date/time type holds a time word (HasTimeWord).
	NotCacheable string

	// The fields below sum up Statements, for callers that handle the text
	// as a whole.

	// ReadOnly: parsed, and every statement is ReadOnly (true for a text
	// with no statement).
	ReadOnly bool
	// WritesUnknown: Unparsed, or some statement WritesUnknown.
	WritesUnknown bool
	// Catalog: Unparsed, or some statement may change the catalog.
	Catalog bool
	// Writes: the union of the statements' Writes, sorted, each name once.
	Writes []Table
	// ReadNames: the bare names (without schema) of every relation the
	// statements read, each once, sorted: what a cache's table versions
	// are keyed by.
	ReadNames []string
}

// Cacheable reports whether NotCacheable is "".
func (i *Info) Cacheable() bool { return i.NotCacheable == "" }

// WritesAnything reports whether running the text may change any relation's
// data or visibility: it names a relation it writes, or may write unnamed
// ones.
func (i *Info) WritesAnything() bool { return i.WritesUnknown || len(i.Writes) > 0 }

// Analyze parses sql, which may hold several statements, and reports what
// each does and whether the text can be answered from a result cache. It is a
// pure function, safe for concurrent use, and never panics; every call runs
// the parser (twice: once more for the fingerprint), so the proxy's hot path
// should go through Classifier.Analyze instead.
func Analyze(sql string) *Info {
	info := &Info{Hints: parseHints(sql)}
	var tree *pg_query.ParseResult
	err := errNUL
	if strings.IndexByte(sql, 0) < 0 {
		tree, err = pg_query.Parse(sql)
	}
	if err != nil {
		info.Unparsed = true
		info.WritesUnknown = true
		info.Catalog = true
		info.NotCacheable = ReasonUnparsed
		return info
	}
	raws := tree.GetStmts()
	info.ReadOnly = true
	if len(raws) > 0 {
		info.Statements = make([]Statement, len(raws))
		// An error here would mean the parser accepted the text a moment
		// ago and rejects it now; leave the fingerprint 0.
		info.Fingerprint, _ = pg_query.FingerprintToUInt64(sql)
	}
	for i, raw := range raws {
		st := &info.Statements[i]
		*st = analyzeStatement(raw.GetStmt())
		if len(raws) == 1 {
			// The fingerprint ignores comments, whitespace and semicolons,
			// so the text's is the statement's (TestStatementFingerprint).
			st.Fingerprint = info.Fingerprint
		} else if text, ok := statementText(sql, raw); ok {
			st.Fingerprint, _ = pg_query.FingerprintToUInt64(text)
		}
		info.ReadOnly = info.ReadOnly && st.ReadOnly
		info.WritesUnknown = info.WritesUnknown || st.WritesUnknown
		info.Catalog = info.Catalog || st.Catalog
	}
	switch len(info.Statements) {
	case 0:
	case 1:
		info.Writes = info.Statements[0].Writes
	default:
		for i := range info.Statements {
			info.Writes = append(info.Writes, info.Statements[i].Writes...)
		}
		info.Writes = sortNames(info.Writes)
	}
	for i := range info.Statements {
		for _, t := range info.Statements[i].Reads {
			if !slices.Contains(info.ReadNames, t.Name) {
				info.ReadNames = append(info.ReadNames, t.Name)
			}
		}
	}
	slices.Sort(info.ReadNames)
	info.NotCacheable = notCacheable(info)
	return info
}

// errNUL stands for the parser's answer to a text with a NUL byte. The parser
// takes a C string, so it would see only the text before the NUL; the server
// rejects such a Query message outright (its string must end at the
// message's end), so the text is Unparsed.
var errNUL = errors.New("sqlinfo: NUL byte in query text")

// statementText returns the text of one statement of sql, from the parser's
// byte offsets (a length of 0 means "to the end").
func statementText(sql string, raw *pg_query.RawStmt) (string, bool) {
	start, n := int(raw.GetStmtLocation()), int(raw.GetStmtLen())
	if start < 0 || start > len(sql) || n < 0 || start+n > len(sql) {
		return "", false
	}
	if n == 0 {
		return sql[start:], true
	}
	return sql[start : start+n], true
}

// notCacheable returns the first reason the text of info cannot be cached.
func notCacheable(info *Info) string {
	switch {
	case info.Unparsed:
		return ReasonUnparsed
	case len(info.Statements) == 0:
		return ReasonEmpty
	case len(info.Statements) > 1:
		return ReasonMultipleStatements
	}
	st := &info.Statements[0]
	switch {
	case st.Kind == KindExplain:
		return ReasonExplain
	case st.Kind != KindSelect:
		return ReasonNotSelect
	case st.SelectInto:
		return ReasonSelectInto
	case st.ModifyingCTE:
		return ReasonModifyingCTE
	case st.Locking:
		return ReasonLockingClause
	case !st.ReadOnly || st.WritesUnknown || len(st.Writes) > 0 || st.Catalog:
		return ReasonNotReadOnly
	case st.ValueFuncs:
		return ReasonValueFunction
	case st.TimeLiteral:
		return ReasonTimeLiteral
	case st.SystemTables:
		return ReasonSystemTable
	case st.TempTables:
		return ReasonTempTable
	case st.TableSample:
		return ReasonTableSample
	case info.Hints.NoCache:
		return ReasonNoCacheHint
	}
	return ""
}

// HasTimeWord reports whether s holds now, today, tomorrow or yesterday, in
// any ASCII case, as a whole run of ASCII letters: the special values that
// PostgreSQL's date/time input turns into the current date or time. (It splits
// its input into fields at every non-letter, so 'snow' is not 'now', and
// ' Now ', 'today 10:00' and 'tomorrow+1' are. Epoch, infinity and allballs
// are constants.) A letter outside ASCII ends a run here, which may report a
// word the server would not: the safe direction.
//
// Analyze applies it to every string constant of a text; the proxy must apply
// it to text-format parameter values too, since $1::timestamptz with 'now'
// is the current time as well. It does not allocate.
func HasTimeWord(s string) bool {
	for i := 0; i < len(s); {
		if !isASCIILetter(s[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(s) && isASCIILetter(s[j]) {
			j++
		}
		switch w := s[i:j]; len(w) {
		case 3:
			if strings.EqualFold(w, "now") {
				return true
			}
		case 5:
			if strings.EqualFold(w, "today") {
				return true
			}
		case 8:
			if strings.EqualFold(w, "tomorrow") {
				return true
			}
		case 9:
			if strings.EqualFold(w, "yesterday") {
				return true
			}
		}
		i = j
	}
	return false
}

func isASCIILetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

// sortNames sorts names by schema, then name, and drops repeats. Names are
// collected with repeats and sorted once at the end, which keeps a text with
// thousands of calls linear-logarithmic, not quadratic.
func sortNames[T ~struct{ Schema, Name string }](names []T) []T {
	if len(names) == 0 {
		return nil
	}
	slices.SortFunc(names, func(a, b T) int {
		x, y := Table(a), Table(b)
		if c := cmp.Compare(x.Schema, y.Schema); c != 0 {
			return c
		}
		return cmp.Compare(x.Name, y.Name)
	})
	return slices.Clip(slices.Compact(names))
}
