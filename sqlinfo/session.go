package sqlinfo

import (
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Effects is what running a statement text does to session state.
//
// The answer is conservative: when the text alone cannot tell (a set_config
// whose is_local argument is a parameter, say), it reports the effect.
type Effects struct {
	// SetsSession: the text may change a session-level setting: SET, RESET
	// and RESET ALL without LOCAL, SET SESSION ..., SET SESSION
	// CHARACTERISTICS AS TRANSACTION, SET ROLE, SET SESSION AUTHORIZATION,
	// SET TIME ZONE, SET NAMES, or a call of set_config whose third argument
	// is not the constant true, anywhere in a statement (nested in SELECT
	// lists, CTEs, subqueries, DML), and DO and CALL, whose code may do any
	// of these unseen. SET LOCAL and SET TRANSACTION do not count: they end
	// with the transaction.
	SetsSession bool
	// Custom lists the customized (dotted, "app.tenant") settings the text
	// sets or resets for the session, lower-cased: PostgreSQL does not list
	// such placeholders in pg_settings, so whoever tracks a session's
	// settings must ask for them by name.
	Custom []string
	// DiscardAll: DISCARD ALL. DISCARD PLANS, SEQUENCES and TEMP set nothing.
	DiscardAll bool
	// DeallocateAll: DEALLOCATE ALL, and also DISCARD ALL, which implies it.
	DeallocateAll bool
	// Pin names the first feature found that keeps state on the backend
	// beyond the transaction, so that the client cannot be multiplexed, or
	// "" when there is none. Statements are searched in order, each one's
	// own kind before the expressions inside it. The values are the Pin*
	// constants.
	Pin string
	// Unparsed: the parser rejected the text; all other fields are zero.
	// See the package documentation for what that does and does not mean.
	Unparsed bool
}

// Equal reports whether e and o are the same effects.
func (e Effects) Equal(o Effects) bool {
	return e.SetsSession == o.SetsSession && e.DiscardAll == o.DiscardAll && e.DeallocateAll == o.DeallocateAll &&
		e.Pin == o.Pin && e.Unparsed == o.Unparsed && slices.Equal(e.Custom, o.Custom)
}

// Values of Effects.Pin.
const (
	// PinListen: LISTEN channel.
	PinListen = "LISTEN"
	// PinComputedSetting: set_config with a setting name that is not a
	// constant, which may create a placeholder setting that cannot be
	// found again by name.
	PinComputedSetting = "set_config with a computed setting name"
	// PinAdvisoryLock: a call of pg_advisory_lock, pg_advisory_lock_shared,
	// pg_try_advisory_lock or pg_try_advisory_lock_shared (session-level
	// locks; the _xact_ variants end with the transaction).
	PinAdvisoryLock = "session advisory lock"
	// PinTempTable: CREATE TEMP TABLE (or CREATE TABLE pg_temp.x), CREATE
	// TEMP TABLE AS, SELECT ... INTO TEMP, CREATE TEMP SEQUENCE or VIEW,
	// unless ON COMMIT DROP.
	PinTempTable = "temporary table"
	// PinHoldCursor: DECLARE ... WITH HOLD.
	PinHoldCursor = "WITH HOLD cursor"
	// PinPrepare: PREPARE name AS ... (a prepared statement made with SQL,
	// which the proxy cannot see being used by EXECUTE).
	PinPrepare = "SQL PREPARE"
	// PinLoad: LOAD 'library'.
	PinLoad = "LOAD"
)

// cursorOptHold is CURSOR_OPT_HOLD from PostgreSQL's parsenodes.h, the bit of
// DeclareCursorStmt.Options that WITH HOLD sets.
const cursorOptHold = 0x0020

// SessionEffects parses sql, which may hold several statements separated by
// semicolons, and reports their combined session effects. It is a pure
// function; every call runs the parser, so the proxy's hot path should go
// through a Classifier instead.
func SessionEffects(sql string) Effects {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return Effects{Unparsed: true}
	}
	var a analyzer
	for _, raw := range tree.GetStmts() {
		a.statement(raw.GetStmt())
	}
	return a.e
}

// analyzer accumulates the Effects of one parse tree.
type analyzer struct {
	e Effects
}

func (a *analyzer) pin(feature string) {
	if a.e.Pin == "" {
		a.e.Pin = feature
	}
}

// statement looks at one top-level statement: first at its own kind, then at
// the expressions inside it.
//
// Utility statements that change the session cannot be nested, so only the
// top level is checked for them; the VariableSetStmt inside ALTER ROLE ... SET,
// ALTER SYSTEM SET or CREATE FUNCTION ... SET changes no session and must not
// count.
func (a *analyzer) statement(n *pg_query.Node) {
	if n == nil {
		return
	}
	switch s := n.GetNode().(type) {
	case *pg_query.Node_VariableSetStmt:
		if setsSession(s.VariableSetStmt) {
			a.e.SetsSession = true
			a.custom(s.VariableSetStmt.GetName())
		}
		return
	case *pg_query.Node_DiscardStmt:
		if s.DiscardStmt.GetTarget() == pg_query.DiscardMode_DISCARD_ALL {
			a.e.DiscardAll = true
			a.e.DeallocateAll = true
		}
		return
	case *pg_query.Node_DeallocateStmt:
		if s.DeallocateStmt.GetIsall() {
			a.e.DeallocateAll = true
		}
		return
	case *pg_query.Node_DoStmt, *pg_query.Node_CallStmt:
		// Code the text does not show may SET, set_config, or create
		// temporary relations: whoever tracks the session reads its
		// state back afterwards.
		a.e.SetsSession = true
		return
	case *pg_query.Node_ListenStmt:
		a.pin(PinListen)
		return
	case *pg_query.Node_LoadStmt:
		a.pin(PinLoad)
		return
	case *pg_query.Node_PrepareStmt:
		// The prepared query is walked too: it runs later, on EXECUTE, which
		// this package cannot connect to it, so its effects are reported here.
		a.pin(PinPrepare)
	case *pg_query.Node_DeclareCursorStmt:
		if s.DeclareCursorStmt.GetOptions()&cursorOptHold != 0 {
			a.pin(PinHoldCursor)
		}
	case *pg_query.Node_CreateStmt:
		c := s.CreateStmt
		if isTempRelation(c.GetRelation()) && c.GetOncommit() != pg_query.OnCommitAction_ONCOMMIT_DROP {
			a.pin(PinTempTable)
		}
	case *pg_query.Node_CreateSeqStmt:
		// Sequences have no ON COMMIT clause.
		if isTempRelation(s.CreateSeqStmt.GetSequence()) {
			a.pin(PinTempTable)
		}
	case *pg_query.Node_ViewStmt:
		if isTempRelation(s.ViewStmt.GetView()) {
			a.pin(PinTempTable)
		}
		// The view's query is stored, not run.
		return
	}
	// CREATE TABLE AS and SELECT INTO: their IntoClause is found by the walk.
	a.walk(n.ProtoReflect())
}

// walk visits every message under m once, in field order, looking for
// function calls and INTO clauses. Each message is visited once, so the walk
// is linear in the size of the tree.
func (a *analyzer) walk(m protoreflect.Message) {
	switch v := m.Interface().(type) {
	case *pg_query.Node:
		// Node is a oneof over every node type: go straight to the member that
		// is set, without asking about the few hundred that are not.
		oneofs := m.Descriptor().Oneofs()
		if oneofs.Len() == 1 {
			if fd := m.WhichOneof(oneofs.Get(0)); fd != nil {
				a.value(fd, m.Get(fd))
			}
			return
		}
	case *pg_query.FuncCall:
		a.funcCall(v)
	case *pg_query.IntoClause:
		if isTempRelation(v.GetRel()) && v.GetOnCommit() != pg_query.OnCommitAction_ONCOMMIT_DROP {
			a.pin(PinTempTable)
		}
	case *pg_query.CreateFunctionStmt, *pg_query.RuleStmt, *pg_query.ViewStmt:
		// Bodies that are stored, not run now. (Column defaults, CHECK
		// constraints and the like are walked: over-reporting is the safe
		// direction.)
		return
	}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || !m.Has(fd) {
			continue
		}
		a.value(fd, m.Get(fd))
	}
}

// value walks the message, list of messages or map of messages v held by
// field fd.
func (a *analyzer) value(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
	switch {
	case fd.IsList():
		l := v.List()
		for i := 0; i < l.Len(); i++ {
			a.walk(l.Get(i).Message())
		}
	case fd.IsMap():
		if fd.MapValue().Message() == nil {
			return
		}
		v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
			a.walk(mv.Message())
			return true
		})
	case fd.Message() != nil:
		a.walk(v.Message())
	}
}

// setsSession reports whether a top-level SET or RESET changes a setting
// beyond the current transaction.
func setsSession(s *pg_query.VariableSetStmt) bool {
	if s.GetIsLocal() {
		return false
	}
	if s.GetKind() == pg_query.VariableSetKind_VAR_SET_MULTI {
		// SET [SESSION] TRANSACTION ... and SET TRANSACTION SNAPSHOT apply to
		// the current transaction only; SET SESSION CHARACTERISTICS AS
		// TRANSACTION (and any multi-form this code does not know) is a
		// session default.
		switch s.GetName() {
		case "TRANSACTION", "TRANSACTION SNAPSHOT":
			return false
		}
	}
	return true
}

// settingName returns a set_config call's setting name, given by position
// (the first) or by name, when it is a string constant.
func settingName(fc *pg_query.FuncCall) (string, bool) {
	var arg *pg_query.Node
	for i, n := range fc.GetArgs() {
		if named := n.GetNamedArgExpr(); named != nil {
			if named.GetName() == "setting_name" {
				arg = named.GetArg()
			}
			continue
		}
		if i == 0 {
			arg = n
		}
	}
	if sv := arg.GetAConst().GetSval(); sv != nil {
		return sv.GetSval(), true
	}
	return "", false
}

// custom records name when it is a customized setting.
func (a *analyzer) custom(name string) {
	if !strings.Contains(name, ".") {
		return
	}
	name = strings.ToLower(name)
	for _, n := range a.e.Custom {
		if n == name {
			return
		}
	}
	a.e.Custom = append(a.e.Custom, name)
}

// funcCall records the effects of one function call.
//
// Names are matched on their last component, whatever the schema, and without
// regard to case: a user function that borrows a built-in's name is reported
// like the built-in, which errs on the safe side.
func (a *analyzer) funcCall(fc *pg_query.FuncCall) {
	names := fc.GetFuncname()
	if len(names) == 0 {
		return
	}
	name := names[len(names)-1].GetString_().GetSval()
	switch {
	case strings.EqualFold(name, "set_config"):
		if !isLocalTrue(fc) {
			a.e.SetsSession = true
			if name, ok := settingName(fc); ok {
				a.custom(name)
			} else {
				// A name only known at run time may be a placeholder
				// nobody can ask for later.
				a.pin(PinComputedSetting)
			}
		}
	case strings.EqualFold(name, "pg_advisory_lock"),
		strings.EqualFold(name, "pg_advisory_lock_shared"),
		strings.EqualFold(name, "pg_try_advisory_lock"),
		strings.EqualFold(name, "pg_try_advisory_lock_shared"):
		a.pin(PinAdvisoryLock)
	}
}

// isLocalTrue reports whether a set_config call's is_local argument, given
// by position (the third) or by name, is the constant true. Anything else, a
// parameter, an expression, a missing or VARIADIC argument, counts as false.
func isLocalTrue(fc *pg_query.FuncCall) bool {
	if fc.GetFuncVariadic() {
		return false
	}
	var arg *pg_query.Node
	position := 0
	for _, n := range fc.GetArgs() {
		if named := n.GetNamedArgExpr(); named != nil {
			if named.GetName() == "is_local" {
				arg = named.GetArg()
			}
			continue
		}
		if position == 2 {
			arg = n
		}
		position++
	}
	c := arg.GetAConst()
	return c != nil && !c.GetIsnull() && c.GetBoolval().GetBoolval()
}

// isTempRelation reports whether a relation being created is temporary: made
// with TEMP/TEMPORARY, or placed in the temporary schema by name (pg_temp, or
// a backend's own pg_temp_N). Schema names are compared without regard to
// case, which may report a quoted "PG_TEMP" schema too: the safe direction.
func isTempRelation(r *pg_query.RangeVar) bool {
	if r == nil {
		return false
	}
	if r.GetRelpersistence() == "t" {
		return true
	}
	schema := r.GetSchemaname()
	return strings.EqualFold(schema, "pg_temp") ||
		(len(schema) > len("pg_temp_") && strings.EqualFold(schema[:len("pg_temp_")], "pg_temp_"))
}
