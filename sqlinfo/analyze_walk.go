package sqlinfo

import (
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// analyzeStatement analyses one top-level statement.
func analyzeStatement(n *pg_query.Node) Statement {
	var w walker
	w.statement(n)
	return w.finish()
}

// walker accumulates the Statement of one parse tree. The tree is walked
// generically, every message once, so that nothing nested (subqueries, CTEs,
// LATERAL, set operations, function arguments, CASE, ORDER BY, window
// clauses, VALUES lists...) is missed; the cases below only say what a node
// means.
type walker struct {
	st Statement
	// readOnly: the statement's own kind changes nothing (SELECT, SHOW...);
	// finish clears it when writes or row locks were found.
	readOnly bool
	// writing: relations found count as written, not read (DDL targets).
	writing bool
	// ctes holds the CTE names in scope, innermost last, and inScope counts
	// them by name (nil until the first WITH).
	ctes    []string
	inScope map[string]int
}

// finish sorts the lists and settles ReadOnly.
func (w *walker) finish() Statement {
	st := w.st
	st.Reads = sortNames(st.Reads)
	st.Writes = sortNames(st.Writes)
	st.Funcs = sortNames(st.Funcs)
	st.Operators = sortNames(st.Operators)
	st.Types = sortNames(st.Types)
	st.ReadOnly = w.readOnly && !st.Locking && !st.WritesUnknown && !st.Catalog && len(st.Writes) == 0
	return st
}

// statement sets the statement's kind from its top-level node and walks what
// the kind says should be walked.
func (w *walker) statement(n *pg_query.Node) {
	st := &w.st
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		st.Kind, w.readOnly = KindSelect, true
		w.walk(n.ProtoReflect())
	case *pg_query.Node_InsertStmt:
		st.Kind = KindInsert
		w.walk(n.ProtoReflect())
	case *pg_query.Node_UpdateStmt:
		st.Kind = KindUpdate
		w.walk(n.ProtoReflect())
	case *pg_query.Node_DeleteStmt:
		st.Kind = KindDelete
		w.walk(n.ProtoReflect())
	case *pg_query.Node_MergeStmt:
		st.Kind = KindMerge
		w.walk(n.ProtoReflect())

	case *pg_query.Node_CopyStmt:
		c := s.CopyStmt
		if c.GetIsFrom() {
			st.Kind = KindCopyFrom
			w.relation(c.GetRelation(), true)
		} else {
			// COPY TO a server file or program writes outside the database.
			st.Kind = KindCopyTo
			w.readOnly = c.GetFilename() == "" && !c.GetIsProgram()
			w.relation(c.GetRelation(), false)
		}
		// The query of COPY (query) TO, which may be DML ... RETURNING; the
		// WHERE clause of COPY FROM.
		w.fields(c.ProtoReflect(), "relation")
	case *pg_query.Node_TruncateStmt:
		st.Kind = KindTruncate
		w.relations(s.TruncateStmt.GetRelations(), true)
		// CASCADE empties the tables that reference these, unnamed.
		st.WritesUnknown = s.TruncateStmt.GetBehavior() == pg_query.DropBehavior_DROP_CASCADE

	case *pg_query.Node_ExplainStmt:
		st.Kind, w.readOnly = KindExplain, true
		// The query runs only with ANALYZE; without it, what it would read
		// and call is still reported.
		w.inner(s.ExplainStmt.GetQuery(), explainAnalyze(s.ExplainStmt.GetOptions()))
	case *pg_query.Node_PrepareStmt:
		// The query runs later, on an EXECUTE whose text cannot be tied to
		// it (EXECUTE is WritesUnknown); its writes are reported here.
		st.Kind, w.readOnly = KindOther, true
		w.inner(s.PrepareStmt.GetQuery(), true)
	case *pg_query.Node_DeclareCursorStmt:
		st.Kind, w.readOnly = KindOther, true
		w.inner(s.DeclareCursorStmt.GetQuery(), true)
	case *pg_query.Node_ExecuteStmt:
		st.Kind, st.WritesUnknown = KindOther, true
		w.walk(n.ProtoReflect()) // the parameters' expressions
	case *pg_query.Node_CallStmt:
		st.Kind, st.WritesUnknown = KindCall, true
		w.walk(n.ProtoReflect())
	case *pg_query.Node_DoStmt:
		// The body is a string in another language: nothing to walk.
		st.Kind, st.WritesUnknown = KindDo, true

	case *pg_query.Node_TransactionStmt:
		st.Kind, w.readOnly = KindTransaction, true
		// COMMIT PREPARED commits writes made by some earlier text.
		st.WritesUnknown = s.TransactionStmt.GetKind() == pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED
	case *pg_query.Node_VariableSetStmt, *pg_query.Node_VariableShowStmt, *pg_query.Node_DiscardStmt,
		*pg_query.Node_ConstraintsSetStmt:
		st.Kind, w.readOnly = KindSet, true
	case *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt, *pg_query.Node_FetchStmt,
		*pg_query.Node_ClosePortalStmt, *pg_query.Node_DeallocateStmt:
		st.Kind, w.readOnly = KindOther, true
	case *pg_query.Node_NotifyStmt, *pg_query.Node_LockStmt, *pg_query.Node_VacuumStmt,
		*pg_query.Node_ClusterStmt, *pg_query.Node_ReindexStmt, *pg_query.Node_CheckPointStmt,
		*pg_query.Node_AlterSystemStmt:
		// Effects outside the session, but no table's data changes (VACUUM
		// FULL and CLUSTER rewrite a table with the same rows).
		st.Kind = KindOther
	case *pg_query.Node_LoadStmt:
		// Loading a library runs its initialisation code.
		st.Kind, st.WritesUnknown = KindOther, true

	default:
		w.ddl(n)
	}
}

// inner analyses the query of EXPLAIN, PREPARE or DECLARE and folds it into
// the statement: what it reads and calls always, what it writes when runs is
// true.
func (w *walker) inner(q *pg_query.Node, runs bool) {
	in := analyzeStatement(q)
	st := &w.st
	st.Reads = append(st.Reads, in.Reads...)
	st.Funcs = append(st.Funcs, in.Funcs...)
	st.Operators = append(st.Operators, in.Operators...)
	st.Types = append(st.Types, in.Types...)
	st.ModifyingCTE = st.ModifyingCTE || in.ModifyingCTE
	st.SelectInto = st.SelectInto || in.SelectInto
	st.ValueFuncs = st.ValueFuncs || in.ValueFuncs
	st.TimeLiteral = st.TimeLiteral || in.TimeLiteral
	st.SystemTables = st.SystemTables || in.SystemTables
	st.TempTables = st.TempTables || in.TempTables
	st.TableSample = st.TableSample || in.TableSample
	if runs {
		st.Writes = append(st.Writes, in.Writes...)
		st.WritesUnknown = st.WritesUnknown || in.WritesUnknown
		st.Catalog = st.Catalog || in.Catalog
		st.Locking = st.Locking || in.Locking
		w.readOnly = w.readOnly && in.ReadOnly
	}
}

// explainAnalyze reports whether EXPLAIN's options run the query: ANALYZE
// present and not explicitly turned off.
func explainAnalyze(options []*pg_query.Node) bool {
	for _, o := range options {
		d := o.GetDefElem()
		if d == nil || !strings.EqualFold(d.GetDefname(), "analyze") {
			continue
		}
		arg := d.GetArg()
		var v string
		switch {
		case arg == nil:
			return true
		case arg.GetString_() != nil:
			v = arg.GetString_().GetSval()
		case arg.GetBoolean() != nil:
			v = "false"
			if arg.GetBoolean().GetBoolval() {
				v = "true"
			}
		case arg.GetInteger() != nil:
			v = "1"
			if arg.GetInteger().GetIval() == 0 {
				v = "0"
			}
		}
		switch strings.ToLower(v) {
		case "false", "off", "0", "no":
			// A later ANALYZE option may still turn it on.
		default:
			return true
		}
	}
	return false
}

// ddl handles the statements that change the catalog. Those that name every
// relation whose data or visibility they can change list them in Writes; the
// rest may change what any query returns, and set WritesUnknown.
func (w *walker) ddl(n *pg_query.Node) {
	st := &w.st
	st.Kind, st.Catalog = KindDDL, true
	switch s := n.GetNode().(type) {
	case *pg_query.Node_CreateStmt:
		w.createTable(s.CreateStmt)
	case *pg_query.Node_CreateForeignTableStmt:
		// A foreign table made a partition shows its rows in the parent at
		// once: the parent is among inh_relations.
		w.createTable(s.CreateForeignTableStmt.GetBaseStmt())
	case *pg_query.Node_CreateTableAsStmt:
		// CREATE TABLE AS, CREATE MATERIALIZED VIEW: the IntoClause is the
		// target, the query is read (or is an EXECUTE: WritesUnknown).
		w.walk(n.ProtoReflect())
	case *pg_query.Node_ViewStmt:
		w.relation(s.ViewStmt.GetView(), true)
		// Replacing a view changes every view and query over it. The query
		// itself is stored, not run.
		st.WritesUnknown = s.ViewStmt.GetReplace()
	case *pg_query.Node_IndexStmt:
		w.relation(s.IndexStmt.GetRelation(), true)
		w.fields(s.IndexStmt.ProtoReflect(), "relation")
	case *pg_query.Node_AlterTableStmt:
		a := s.AlterTableStmt
		// ALTER TYPE of a composite type is parsed as ALTER TABLE.
		st.WritesUnknown = a.GetObjtype() == pg_query.ObjectType_OBJECT_TYPE
		for _, c := range a.GetCmds() {
			if c.GetAlterTableCmd().GetBehavior() == pg_query.DropBehavior_DROP_CASCADE {
				st.WritesUnknown = true // DROP COLUMN ... CASCADE drops views
			}
		}
		// Every relation named is changed: the table, partitions attached
		// or detached, parents inherited or disinherited (and the tables a
		// new foreign key references, which is harmless extra).
		w.writing = true
		w.walk(n.ProtoReflect())
		w.writing = false
	case *pg_query.Node_CreateSeqStmt:
		w.relation(s.CreateSeqStmt.GetSequence(), true)
	case *pg_query.Node_AlterSeqStmt:
		w.relation(s.AlterSeqStmt.GetSequence(), true)
	case *pg_query.Node_CreatePolicyStmt:
		w.relation(s.CreatePolicyStmt.GetTable(), true)
		w.fields(s.CreatePolicyStmt.ProtoReflect(), "table")
	case *pg_query.Node_AlterPolicyStmt:
		w.relation(s.AlterPolicyStmt.GetTable(), true)
		w.fields(s.AlterPolicyStmt.ProtoReflect(), "table")
	case *pg_query.Node_RefreshMatViewStmt:
		w.relation(s.RefreshMatViewStmt.GetRelation(), true)
	case *pg_query.Node_GrantStmt:
		g := s.GrantStmt
		switch {
		case g.GetTargtype() == pg_query.GrantTargetType_ACL_TARGET_OBJECT &&
			(g.GetObjtype() == pg_query.ObjectType_OBJECT_TABLE || g.GetObjtype() == pg_query.ObjectType_OBJECT_SEQUENCE):
			// Who may read a table changes what a cached answer may be
			// shown to.
			w.relations(g.GetObjects(), true)
			// REVOKE ... CASCADE revokes from others too: same tables.
		default:
			// ON ALL TABLES IN SCHEMA, functions, schemas, types, ...
			st.WritesUnknown = true
		}
	case *pg_query.Node_DropStmt:
		w.drop(s.DropStmt)
	case *pg_query.Node_CreateTrigStmt:
		w.relation(s.CreateTrigStmt.GetRelation(), true)
		st.WritesUnknown = true
	case *pg_query.Node_RuleStmt:
		w.relation(s.RuleStmt.GetRelation(), true)
		st.WritesUnknown = true
	case *pg_query.Node_RenameStmt:
		w.relation(s.RenameStmt.GetRelation(), true)
		st.WritesUnknown = true // names now resolve elsewhere
	case *pg_query.Node_AlterObjectSchemaStmt:
		w.relation(s.AlterObjectSchemaStmt.GetRelation(), true)
		st.WritesUnknown = true
	case *pg_query.Node_AlterOwnerStmt:
		w.relation(s.AlterOwnerStmt.GetRelation(), true)
		st.WritesUnknown = true // the owner bypasses row-level security
	case *pg_query.Node_CommentStmt, *pg_query.Node_CreateStatsStmt, *pg_query.Node_AlterStatsStmt:
		// Descriptions and planner statistics: no data changes.
	case *pg_query.Node_CreateSchemaStmt, *pg_query.Node_AlterDomainStmt, *pg_query.Node_AlterDefaultPrivilegesStmt,
		*pg_query.Node_GrantRoleStmt, *pg_query.Node_AlterCollationStmt, *pg_query.Node_CreateTableSpaceStmt,
		*pg_query.Node_DropTableSpaceStmt, *pg_query.Node_AlterTableSpaceOptionsStmt, *pg_query.Node_AlterTableMoveAllStmt,
		*pg_query.Node_CreateExtensionStmt, *pg_query.Node_AlterExtensionStmt, *pg_query.Node_AlterExtensionContentsStmt,
		*pg_query.Node_CreateFdwStmt, *pg_query.Node_AlterFdwStmt, *pg_query.Node_CreateForeignServerStmt,
		*pg_query.Node_AlterForeignServerStmt, *pg_query.Node_CreateUserMappingStmt, *pg_query.Node_AlterUserMappingStmt,
		*pg_query.Node_DropUserMappingStmt, *pg_query.Node_ImportForeignSchemaStmt, *pg_query.Node_CreateAmStmt,
		*pg_query.Node_CreateEventTrigStmt, *pg_query.Node_AlterEventTrigStmt, *pg_query.Node_CreatePlangStmt,
		*pg_query.Node_CreateRoleStmt, *pg_query.Node_AlterRoleStmt, *pg_query.Node_AlterRoleSetStmt,
		*pg_query.Node_DropRoleStmt, *pg_query.Node_DefineStmt, *pg_query.Node_CreateDomainStmt,
		*pg_query.Node_CreateOpClassStmt, *pg_query.Node_CreateOpFamilyStmt, *pg_query.Node_AlterOpFamilyStmt,
		*pg_query.Node_SecLabelStmt, *pg_query.Node_CreateFunctionStmt, *pg_query.Node_AlterFunctionStmt,
		*pg_query.Node_AlterObjectDependsStmt, *pg_query.Node_AlterOperatorStmt, *pg_query.Node_AlterTypeStmt,
		*pg_query.Node_CompositeTypeStmt, *pg_query.Node_CreateEnumStmt, *pg_query.Node_CreateRangeStmt,
		*pg_query.Node_AlterEnumStmt, *pg_query.Node_CreatedbStmt, *pg_query.Node_AlterDatabaseStmt,
		*pg_query.Node_AlterDatabaseRefreshCollStmt, *pg_query.Node_AlterDatabaseSetStmt, *pg_query.Node_DropdbStmt,
		*pg_query.Node_CreateConversionStmt, *pg_query.Node_CreateCastStmt, *pg_query.Node_CreateTransformStmt,
		*pg_query.Node_DropOwnedStmt, *pg_query.Node_ReassignOwnedStmt, *pg_query.Node_AlterTsdictionaryStmt,
		*pg_query.Node_AlterTsconfigurationStmt, *pg_query.Node_CreatePublicationStmt,
		*pg_query.Node_AlterPublicationStmt, *pg_query.Node_CreateSubscriptionStmt,
		*pg_query.Node_AlterSubscriptionStmt, *pg_query.Node_DropSubscriptionStmt:
		// Functions, types, operators, casts, schemas, roles, privileges,
		// extensions, databases, foreign servers, subscriptions: any query
		// may now resolve, compute or be allowed differently.
		st.WritesUnknown = true
	default:
		// A statement this package does not know (a newer pg_query, or a
		// node that only PL/pgSQL produces): assume the worst.
		st.Kind = KindOther
		st.WritesUnknown = true
	}
}

// createTable lists the new table and the parents it becomes a partition or
// child of, and walks the rest (defaults, constraints, LIKE) for reads and
// calls.
func (w *walker) createTable(c *pg_query.CreateStmt) {
	if c == nil {
		return
	}
	w.relation(c.GetRelation(), true)
	w.relations(c.GetInhRelations(), true)
	w.fields(c.ProtoReflect(), "relation", "inh_relations")
}

// drop handles DROP of relations and of objects that belong to one.
func (w *walker) drop(d *pg_query.DropStmt) {
	st := &w.st
	// CASCADE drops dependent views, columns and policies, unnamed.
	st.WritesUnknown = d.GetBehavior() == pg_query.DropBehavior_DROP_CASCADE
	var trim int // how many trailing name parts are not the relation's
	switch d.GetRemoveType() {
	case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_VIEW, pg_query.ObjectType_OBJECT_MATVIEW,
		pg_query.ObjectType_OBJECT_FOREIGN_TABLE, pg_query.ObjectType_OBJECT_SEQUENCE, pg_query.ObjectType_OBJECT_INDEX:
	case pg_query.ObjectType_OBJECT_POLICY, pg_query.ObjectType_OBJECT_TRIGGER, pg_query.ObjectType_OBJECT_RULE:
		// [schema.]table.name
		trim = 1
	default:
		st.WritesUnknown = true
		return
	}
	for _, o := range d.GetObjects() {
		items := o.GetList().GetItems()
		if len(items) <= trim {
			st.WritesUnknown = true // a shape this code does not know
			continue
		}
		items = items[:len(items)-trim]
		t := Table{Name: items[len(items)-1].GetString_().GetSval()}
		if len(items) > 1 {
			t.Schema = items[len(items)-2].GetString_().GetSval()
		}
		w.table(t, true, false)
	}
}

// walk visits every message under m once, in field order.
func (w *walker) walk(m protoreflect.Message) {
	st := &w.st
	switch v := m.Interface().(type) {
	case *pg_query.Node:
		// Node is a oneof over every node type: go straight to the member
		// that is set.
		oneofs := m.Descriptor().Oneofs()
		if oneofs.Len() == 1 {
			if fd := m.WhichOneof(oneofs.Get(0)); fd != nil {
				w.value(fd, m.Get(fd))
			}
			return
		}
	case *pg_query.RangeVar:
		w.relation(v, w.writing)
		return
	case *pg_query.SelectStmt:
		mark := w.enterWith(v.GetWithClause())
		if v.GetIntoClause() != nil {
			st.SelectInto = true
		}
		w.fields(m, "with_clause")
		w.leaveWith(mark)
		return
	case *pg_query.InsertStmt:
		w.modify(m, v.GetWithClause(), v.GetRelation())
		return
	case *pg_query.UpdateStmt:
		w.modify(m, v.GetWithClause(), v.GetRelation())
		return
	case *pg_query.DeleteStmt:
		w.modify(m, v.GetWithClause(), v.GetRelation())
		return
	case *pg_query.MergeStmt:
		w.modify(m, v.GetWithClause(), v.GetRelation())
		return
	case *pg_query.CommonTableExpr:
		switch v.GetCtequery().GetNode().(type) {
		case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
			st.ModifyingCTE = true
		}
	case *pg_query.IntoClause:
		// SELECT INTO, CREATE TABLE AS: a new table. A materialized view's
		// stored query (view_query) is the query being walked anyway.
		w.relation(v.GetRel(), true)
		st.Catalog = true
		return
	case *pg_query.LockingClause:
		// Its relations are FROM aliases, not tables.
		st.Locking = true
		return
	case *pg_query.FuncCall:
		st.Funcs = appendName(st.Funcs, v.GetFuncname())
	case *pg_query.TypeCast:
		// A date or time input turns 'now', 'today'... into the current
		// time. A constant is checked as a constant, a parameter by the
		// caller (HasTimeWord); any other value cast to such a type (a
		// column, a concatenation) may hold such a word.
		if isDateTimeType(v.GetTypeName()) {
			switch v.GetArg().GetNode().(type) {
			case *pg_query.Node_AConst, *pg_query.Node_ParamRef:
			default:
				st.TimeLiteral = true
			}
		}
	case *pg_query.A_Expr:
		w.operator(v)
	case *pg_query.SubLink:
		switch {
		case len(v.GetOperName()) > 0:
			st.Operators = appendName(st.Operators, v.GetOperName())
		case v.GetSubLinkType() == pg_query.SubLinkType_ANY_SUBLINK:
			st.Operators = append(st.Operators, Func{Name: "="}) // x IN (SELECT ...)
		}
	case *pg_query.SortBy:
		st.Operators = appendName(st.Operators, v.GetUseOp())
	case *pg_query.TypeName:
		w.typeName(v)
		return
	case *pg_query.SQLValueFunction:
		st.ValueFuncs = true
		return
	case *pg_query.A_Const:
		if s := v.GetSval(); s != nil && HasTimeWord(s.GetSval()) {
			st.TimeLiteral = true
		}
		return
	case *pg_query.RangeTableSample:
		st.TableSample = true
	case *pg_query.ExecuteStmt:
		// CREATE TABLE AS EXECUTE, EXPLAIN ANALYZE EXECUTE: a text this
		// package cannot see.
		st.WritesUnknown = true
	case *pg_query.CreateFunctionStmt, *pg_query.RuleStmt, *pg_query.ViewStmt, *pg_query.CreateTrigStmt,
		*pg_query.DoStmt:
		// Bodies that are stored, not run (or not SQL); only reachable
		// nested, inside CREATE SCHEMA say, which is WritesUnknown anyway.
		return
	}
	w.fields(m)
}

// fields walks the fields of m that hold messages, except those named in
// skip.
func (w *walker) fields(m protoreflect.Message, skip ...protoreflect.Name) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || !m.Has(fd) || slices.Contains(skip, fd.Name()) {
			continue
		}
		w.value(fd, m.Get(fd))
	}
}

// value walks the message, list of messages or map of messages v held by
// field fd.
func (w *walker) value(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
	switch {
	case fd.IsList():
		l := v.List()
		for i := 0; i < l.Len(); i++ {
			w.walk(l.Get(i).Message())
		}
	case fd.IsMap():
		if fd.MapValue().Message() == nil {
			return
		}
		v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
			w.walk(mv.Message())
			return true
		})
	case fd.Message() != nil:
		w.walk(v.Message())
	}
}

// modify walks INSERT, UPDATE, DELETE or MERGE m: its target is written
// (never a CTE, even when a CTE has its name), the rest is walked inside the
// scope of its WITH.
func (w *walker) modify(m protoreflect.Message, with *pg_query.WithClause, target *pg_query.RangeVar) {
	mark := w.enterWith(with)
	w.relation(target, true)
	w.fields(m, "with_clause", "relation")
	w.leaveWith(mark)
}

// enterWith walks the CTEs of with and brings their names into scope, as
// PostgreSQL does: in a plain WITH each body sees the names before it, in WITH
// RECURSIVE every body sees every name. It returns the mark to give
// leaveWith when the statement that owns with has been walked.
func (w *walker) enterWith(with *pg_query.WithClause) int {
	mark := len(w.ctes)
	if with == nil {
		return mark
	}
	ctes := with.GetCtes()
	if with.GetRecursive() {
		for _, c := range ctes {
			w.pushCTE(c.GetCommonTableExpr().GetCtename())
		}
		for _, c := range ctes {
			w.walk(c.ProtoReflect())
		}
		return mark
	}
	for _, c := range ctes {
		w.walk(c.ProtoReflect())
		w.pushCTE(c.GetCommonTableExpr().GetCtename())
	}
	return mark
}

func (w *walker) pushCTE(name string) {
	if w.inScope == nil {
		w.inScope = make(map[string]int)
	}
	w.ctes = append(w.ctes, name)
	w.inScope[name]++
}

// leaveWith takes the names brought in after mark out of scope.
func (w *walker) leaveWith(mark int) {
	for _, name := range w.ctes[mark:] {
		w.inScope[name]--
	}
	w.ctes = w.ctes[:mark]
}

// relations records the RangeVars among nodes.
func (w *walker) relations(nodes []*pg_query.Node, write bool) {
	for _, n := range nodes {
		if rv := n.GetRangeVar(); rv != nil {
			w.relation(rv, write)
		}
	}
}

// relation records rv as read or written. An unqualified read of a name in
// CTE scope is the CTE, not a relation.
func (w *walker) relation(rv *pg_query.RangeVar, write bool) {
	if rv == nil {
		return
	}
	t := Table{Schema: rv.GetSchemaname(), Name: rv.GetRelname()}
	cte := !write && t.Schema == "" && rv.GetCatalogname() == "" && w.inScope[t.Name] > 0
	if cte {
		return
	}
	w.table(t, write, isTempRelation(rv))
}

// table records t, and what its schema says about it.
func (w *walker) table(t Table, write, temp bool) {
	st := &w.st
	if isSystemRelation(t) {
		st.SystemTables = true
		if write {
			// Writing the catalog directly can change anything.
			st.Catalog = true
			st.WritesUnknown = true
		}
	}
	if temp {
		st.TempTables = true
	}
	if write {
		st.Writes = append(st.Writes, t)
	} else {
		st.Reads = append(st.Reads, t)
	}
}

// isSystemRelation reports whether t is, or may be, a system catalog, a
// system view or a TOAST table. Schemas are compared without regard to case,
// which may report a quoted "PG_CATALOG" schema too: the safe direction.
func isSystemRelation(t Table) bool {
	if t.Schema == "" {
		return hasPrefixFoldASCII(t.Name, "pg_")
	}
	return equalFoldASCII(t.Schema, "pg_catalog") || equalFoldASCII(t.Schema, "information_schema") ||
		hasPrefixFoldASCII(t.Schema, "pg_toast")
}

// operator records the operators an A_Expr is or stands for.
func (w *walker) operator(e *pg_query.A_Expr) {
	st := &w.st
	switch e.GetKind() {
	case pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_BETWEEN_SYM:
		st.Operators = append(st.Operators, Func{Name: ">="}, Func{Name: "<="})
	case pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		st.Operators = append(st.Operators, Func{Name: "<"}, Func{Name: ">"})
	default:
		// The name is the operator for every other kind: = for IN, NULLIF
		// and IS [NOT] DISTINCT FROM, ~~ for LIKE, ~ for SIMILAR TO.
		st.Operators = appendName(st.Operators, e.GetName())
	}
}

// dateTimeTypes are the types whose input accepts 'now' and friends, by
// the names pg_query gives them. Read-only.
var dateTimeTypes = map[string]bool{
	"date": true, "time": true, "timetz": true, "timestamp": true, "timestamptz": true,
	"abstime": true, "reltime": true, "interval": false,
}

func isDateTimeType(t *pg_query.TypeName) bool {
	names := t.GetNames()
	if len(names) == 0 {
		return false
	}
	return dateTimeTypes[names[len(names)-1].GetString_().GetSval()]
}

// oidAliasTypes are the types whose input looks a name up in the catalog.
// Read-only.
var oidAliasTypes = map[string]bool{
	"regclass": true, "regcollation": true, "regconfig": true, "regdictionary": true,
	"regnamespace": true, "regoper": true, "regoperator": true, "regproc": true,
	"regprocedure": true, "regrole": true, "regtype": true,
}

// typeName records a type name.
func (w *walker) typeName(t *pg_query.TypeName) {
	if t.GetPctType() {
		return // column%TYPE, in function signatures: not a type's name
	}
	n := len(w.st.Types)
	w.st.Types = appendName(w.st.Types, t.GetNames())
	if len(w.st.Types) > n {
		f := w.st.Types[n]
		if oidAliasTypes[f.Name] && (f.Schema == "" || f.Schema == "pg_catalog") {
			w.st.SystemTables = true
		}
	}
}

// appendName appends the name held in a list of String nodes, [catalog.]
// [schema.]name, to names; a list without a string name adds nothing.
func appendName(names []Func, parts []*pg_query.Node) []Func {
	if len(parts) == 0 {
		return names
	}
	f := Func{Name: parts[len(parts)-1].GetString_().GetSval()}
	if f.Name == "" {
		return names
	}
	if len(parts) > 1 {
		f.Schema = parts[len(parts)-2].GetString_().GetSval()
	}
	return append(names, f)
}
