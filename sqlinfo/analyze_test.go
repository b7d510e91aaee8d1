package sqlinfo

import (
	"slices"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// analyzeCase is one single-statement text and what Analyze must say about
// it. Lists are space-separated schema.name strings in the order Analyze
// sorts them: by schema ("" first), then name.
type analyzeCase struct {
	name    string
	sql     string
	kind    Kind
	ro      bool
	reads   string
	writes  string
	unknown bool // WritesUnknown
	catalog bool
	reason  string
}

// analyzeCases is shared by the table test, the classifier tests and the fuzz
// seed corpus.
var analyzeCases = []analyzeCase{
	// Reads, and the shapes they hide in.
	{name: "constant", sql: "select 1", kind: KindSelect, ro: true},
	{name: "parameter cast", sql: "select $1::int", kind: KindSelect, ro: true},
	{name: "table", sql: "table t", kind: KindSelect, ro: true, reads: "t"},
	{name: "values", sql: "values (1), (2)", kind: KindSelect, ro: true},
	{name: "from", sql: "select * from t where id = $1", kind: KindSelect, ro: true, reads: "t"},
	{name: "qualified", sql: "select * from s.t", kind: KindSelect, ro: true, reads: "s.t"},
	{name: "quoted mixed case", sql: `select * from "MixedCase"."T"`, kind: KindSelect, ro: true, reads: "MixedCase.T"},
	{name: "unquoted folds", sql: "SELECT * FROM Foo.BAR", kind: KindSelect, ro: true, reads: "foo.bar"},
	{name: "catalog-qualified", sql: "select * from db.s.t", kind: KindSelect, ro: true, reads: "s.t"},
	{name: "alias and only", sql: "select * from only t as x, u y", kind: KindSelect, ro: true, reads: "t u"},
	{name: "lateral join", sql: "select * from a join lateral (select * from b) x on true", kind: KindSelect, ro: true, reads: "a b"},
	{name: "joins", sql: "select * from a full join b using (id) cross join c left join d on d.x = a.x", kind: KindSelect, ro: true, reads: "a b c d"},
	{name: "union", sql: "select 1 union select 2 from t", kind: KindSelect, ro: true, reads: "t"},
	{name: "intersect except", sql: "(select x from a intersect select x from b) except all select x from c", kind: KindSelect, ro: true, reads: "a b c"},
	{name: "exists", sql: "select * from a where exists (select 1 from b where b.x = a.x)", kind: KindSelect, ro: true, reads: "a b"},
	{name: "in subquery", sql: "select * from a where x not in (select y from b)", kind: KindSelect, ro: true, reads: "a b"},
	{name: "scalar subquery", sql: "select (select max(x) from b) from a", kind: KindSelect, ro: true, reads: "a b"},
	{name: "case subquery", sql: "select case when x then (select 1 from b) else 0 end from a", kind: KindSelect, ro: true, reads: "a b"},
	{name: "function argument subquery", sql: "select coalesce(f((select x from b)), 0)", kind: KindSelect, ro: true, reads: "b"},
	{name: "order by subquery", sql: "select * from a order by (select x from b limit 1)", kind: KindSelect, ro: true, reads: "a b"},
	{name: "window subquery", sql: "select sum(x) over (partition by (select 1 from b)) from a", kind: KindSelect, ro: true, reads: "a b"},
	{name: "group having", sql: "select x from a group by x having count(*) > (select count(*) from b)", kind: KindSelect, ro: true, reads: "a b"},
	{name: "values subquery", sql: "values ((select x from b))", kind: KindSelect, ro: true, reads: "b"},
	{name: "any array subquery", sql: "select * from a where x = any(array(select y from b))", kind: KindSelect, ro: true, reads: "a b"},
	{name: "limit subquery", sql: "select * from a limit (select n from b)", kind: KindSelect, ro: true, reads: "a b"},
	{name: "values in from", sql: "select * from (values (1)) v(x) join c on true", kind: KindSelect, ro: true, reads: "c"},
	{name: "set returning function", sql: "select * from generate_series(1, 3) g, t", kind: KindSelect, ro: true, reads: "t"},
	{name: "json_table", sql: "select * from t, json_table(t.j, '$[*]' columns (a int path '$.a')) jt", kind: KindSelect, ro: true, reads: "t"},
	{name: "repeated table once", sql: "select * from t a join t b on a.x = b.x", kind: KindSelect, ro: true, reads: "t"},
	{name: "volatile function still a candidate", sql: "select nextval('s')", kind: KindSelect, ro: true},
	{name: "now() still a candidate", sql: "select * from t where d > now()", kind: KindSelect, ro: true, reads: "t"},
	{name: "word with now inside", sql: "select * from t where w = 'snow' or w = 'known'", kind: KindSelect, ro: true, reads: "t"},

	// CTE names are not tables, within their scope only.
	{name: "cte", sql: "with w as (select * from t) select * from w", kind: KindSelect, ro: true, reads: "t"},
	{name: "cte qualified name is a table", sql: "with w as (select 1) select * from w, s.w", kind: KindSelect, ro: true, reads: "s.w"},
	{name: "cte out of scope", sql: "select * from w, (with w as (select 1) select * from w) x", kind: KindSelect, ro: true, reads: "w"},
	{name: "cte sees earlier only", sql: "with a as (select * from b), b as (select * from a) select * from b", kind: KindSelect, ro: true, reads: "b"},
	{name: "cte body does not see itself", sql: "with t as (select * from t) select * from t", kind: KindSelect, ro: true, reads: "t"},
	{name: "recursive cte", sql: "with recursive r(n) as (select 1 union all select n + 1 from r where n < 10) select * from r", kind: KindSelect, ro: true},
	{name: "recursive forward reference", sql: "with recursive a as (select * from b), b as (select 1) select * from a", kind: KindSelect, ro: true},
	{name: "cte in subquery", sql: "with t as (select 1) select * from (select * from t) x", kind: KindSelect, ro: true},
	{name: "nested cte scope", sql: "with a as (with b as (select * from c) select * from b) select * from a, b", kind: KindSelect, ro: true, reads: "b c"},
	{name: "cte in union arm", sql: "with w as (select * from t) select * from w union select * from u", kind: KindSelect, ro: true, reads: "t u"},

	// SELECT that is not a candidate.
	{name: "for update", sql: "select * from t for update", kind: KindSelect, reads: "t", reason: ReasonLockingClause},
	{name: "for share of skip locked", sql: "select * from t for share of t skip locked", kind: KindSelect, reads: "t", reason: ReasonLockingClause},
	{name: "nested for key share", sql: "select * from (select * from t for key share) x", kind: KindSelect, reads: "t", reason: ReasonLockingClause},
	{name: "select into", sql: "select * into t2 from t", kind: KindSelect, reads: "t", writes: "t2", catalog: true, reason: ReasonSelectInto},
	{name: "modifying cte", sql: "with w as (delete from t returning *) select * from w", kind: KindSelect, writes: "t", reason: ReasonModifyingCTE},
	{name: "modifying cte and read", sql: "with w as (insert into log values (1) returning *) select * from w, t", kind: KindSelect, reads: "t", writes: "log", reason: ReasonModifyingCTE},
	{name: "modifying cte update", sql: "with w as (update t set x = 1 where id in (select id from u) returning *) select 1", kind: KindSelect, reads: "u", writes: "t", reason: ReasonModifyingCTE},
	{name: "current_date", sql: "select current_date", kind: KindSelect, ro: true, reason: ReasonValueFunction},
	{name: "current_user", sql: "select current_user", kind: KindSelect, ro: true, reason: ReasonValueFunction},
	{name: "current_timestamp in where", sql: "select * from t where d > current_timestamp - interval '1 day'", kind: KindSelect, ro: true, reads: "t", reason: ReasonValueFunction},
	{name: "localtime in subquery", sql: "select * from t where x in (select y from u where z < localtimestamp(3))", kind: KindSelect, ro: true, reads: "t u", reason: ReasonValueFunction},
	{name: "now literal", sql: "select 'now'::timestamptz", kind: KindSelect, ro: true, reason: ReasonTimeLiteral},
	{name: "today literal", sql: "select * from t where d = 'today'", kind: KindSelect, ro: true, reads: "t", reason: ReasonTimeLiteral},
	{name: "typed tomorrow", sql: "select timestamp 'TOMORROW'", kind: KindSelect, ro: true, reason: ReasonTimeLiteral},
	{name: "yesterday dollar quoted", sql: "select $q$ yesterday $q$::date", kind: KindSelect, ro: true, reason: ReasonTimeLiteral},
	{name: "escaped now", sql: `select E'n\x6fw'::date`, kind: KindSelect, ro: true, reason: ReasonTimeLiteral},
	{name: "pg_class", sql: "select * from pg_class", kind: KindSelect, ro: true, reads: "pg_class", reason: ReasonSystemTable},
	{name: "pg_catalog qualified", sql: "select * from pg_catalog.pg_class c join t on true", kind: KindSelect, ro: true, reads: "t pg_catalog.pg_class", reason: ReasonSystemTable},
	{name: "information_schema", sql: "select * from information_schema.tables", kind: KindSelect, ro: true, reads: "information_schema.tables", reason: ReasonSystemTable},
	{name: "pg_toast", sql: "select * from pg_toast.pg_toast_1", kind: KindSelect, ro: true, reads: "pg_toast.pg_toast_1", reason: ReasonSystemTable},
	{name: "regclass cast", sql: "select 't'::regclass", kind: KindSelect, ro: true, reason: ReasonSystemTable},
	{name: "pg_temp", sql: "select * from pg_temp.t", kind: KindSelect, ro: true, reads: "pg_temp.t", reason: ReasonTempTable},
	{name: "tablesample", sql: "select * from t tablesample system (10)", kind: KindSelect, ro: true, reads: "t", reason: ReasonTableSample},
	{name: "nocache hint", sql: "/* pgsidecar:nocache */ select * from t", kind: KindSelect, ro: true, reads: "t", reason: ReasonNoCacheHint},
	{name: "hint in a string", sql: "select '/* pgsidecar:nocache */' from t", kind: KindSelect, ro: true, reads: "t"},
	{name: "ttl hint is cacheable", sql: "select * from t -- pgsidecar:ttl=30s", kind: KindSelect, ro: true, reads: "t"},
	{name: "write reason before hint", sql: "/* pgsidecar:nocache */ delete from t", kind: KindDelete, writes: "t", reason: ReasonNotSelect},

	// EXPLAIN: never cacheable; writes only when ANALYZE runs the query.
	{name: "explain", sql: "explain select * from t", kind: KindExplain, ro: true, reads: "t", reason: ReasonExplain},
	{name: "explain analyze delete", sql: "explain analyze delete from t", kind: KindExplain, writes: "t", reason: ReasonExplain},
	{name: "explain delete", sql: "explain delete from t where x in (select y from u)", kind: KindExplain, ro: true, reads: "u", reason: ReasonExplain},
	{name: "explain analyze false", sql: "explain (analyze false, costs off) delete from t", kind: KindExplain, ro: true, reason: ReasonExplain},
	{name: "explain analyze on", sql: "explain (analyze on, buffers) update t set x = 1 from u", kind: KindExplain, reads: "u", writes: "t", reason: ReasonExplain},
	{name: "explain analyze execute", sql: "explain analyze execute p(1)", kind: KindExplain, unknown: true, reason: ReasonExplain},
	{name: "explain execute", sql: "explain execute p(1)", kind: KindExplain, ro: true, reason: ReasonExplain},
	{name: "explain analyze create table as", sql: "explain analyze create table n as select * from t", kind: KindExplain, reads: "t", writes: "n", catalog: true, reason: ReasonExplain},

	// DML.
	{name: "insert values", sql: "insert into t values (1)", kind: KindInsert, writes: "t", reason: ReasonNotSelect},
	{name: "insert select", sql: "insert into t select * from src", kind: KindInsert, reads: "src", writes: "t", reason: ReasonNotSelect},
	{name: "insert on conflict", sql: "insert into t (a) select a from src on conflict (a) do update set a = excluded.a returning *", kind: KindInsert, reads: "src", writes: "t", reason: ReasonNotSelect},
	{name: "insert default values", sql: "insert into s.t default values", kind: KindInsert, writes: "s.t", reason: ReasonNotSelect},
	{name: "with then insert", sql: "with w as (select * from src) insert into t select * from w", kind: KindInsert, reads: "src", writes: "t", reason: ReasonNotSelect},
	{name: "insert with", sql: "insert into t with w as (select * from src) select * from w", kind: KindInsert, reads: "src", writes: "t", reason: ReasonNotSelect},
	{name: "insert target named like a cte", sql: "with t as (select 1) insert into t select * from t", kind: KindInsert, writes: "t", reason: ReasonNotSelect},
	{name: "delete into insert", sql: "with d as (delete from a returning *) insert into b select * from d", kind: KindInsert, writes: "a b", reason: ReasonNotSelect},
	{name: "update from", sql: "update t set x = 1 from u where t.id = u.id", kind: KindUpdate, reads: "u", writes: "t", reason: ReasonNotSelect},
	{name: "update subquery", sql: "update t set x = (select max(y) from u)", kind: KindUpdate, reads: "u", writes: "t", reason: ReasonNotSelect},
	{name: "update self join", sql: "update t set x = 1 from t t2 where t.id = t2.id", kind: KindUpdate, reads: "t", writes: "t", reason: ReasonNotSelect},
	{name: "delete using", sql: "delete from t using u where t.id = u.id", kind: KindDelete, reads: "u", writes: "t", reason: ReasonNotSelect},
	{name: "delete in returning", sql: "delete from t where id in (select id from u) returning *", kind: KindDelete, reads: "u", writes: "t", reason: ReasonNotSelect},
	{name: "merge", sql: "merge into t using s on t.id = s.id when matched then update set x = s.x when not matched then insert values (s.id)", kind: KindMerge, reads: "s", writes: "t", reason: ReasonNotSelect},
	{name: "merge subquery source", sql: "merge into t using (select * from s join u using (id)) x on t.id = x.id when matched then delete", kind: KindMerge, reads: "s u", writes: "t", reason: ReasonNotSelect},
	{name: "update catalog", sql: "update pg_catalog.pg_class set relname = 'x'", kind: KindUpdate, writes: "pg_catalog.pg_class", unknown: true, catalog: true, reason: ReasonNotSelect},

	// COPY.
	{name: "copy from stdin", sql: "copy t from stdin", kind: KindCopyFrom, writes: "t", reason: ReasonNotSelect},
	{name: "copy from columns options", sql: "copy s.t (a, b) from stdin with (format csv) where a > 0", kind: KindCopyFrom, writes: "s.t", reason: ReasonNotSelect},
	{name: "copy to stdout", sql: "copy t to stdout", kind: KindCopyTo, ro: true, reads: "t", reason: ReasonNotSelect},
	{name: "copy query to", sql: "copy (select * from t join u using (id)) to stdout", kind: KindCopyTo, ro: true, reads: "t u", reason: ReasonNotSelect},
	{name: "copy to file", sql: "copy t to '/tmp/t.csv'", kind: KindCopyTo, reads: "t", reason: ReasonNotSelect},
	{name: "copy dml to", sql: "copy (delete from t returning *) to stdout", kind: KindCopyTo, writes: "t", reason: ReasonNotSelect},

	// TRUNCATE.
	{name: "truncate", sql: "truncate t, s.u", kind: KindTruncate, writes: "t s.u", reason: ReasonNotSelect},
	{name: "truncate only restart", sql: "truncate table only t restart identity", kind: KindTruncate, writes: "t", reason: ReasonNotSelect},
	{name: "truncate cascade", sql: "truncate t cascade", kind: KindTruncate, writes: "t", unknown: true, reason: ReasonNotSelect},

	// Transactions and session settings.
	{name: "begin", sql: "begin isolation level serializable", kind: KindTransaction, ro: true, reason: ReasonNotSelect},
	{name: "commit", sql: "commit", kind: KindTransaction, ro: true, reason: ReasonNotSelect},
	{name: "savepoint", sql: "savepoint a", kind: KindTransaction, ro: true, reason: ReasonNotSelect},
	{name: "rollback to", sql: "rollback to savepoint a", kind: KindTransaction, ro: true, reason: ReasonNotSelect},
	{name: "prepare transaction", sql: "prepare transaction 'x'", kind: KindTransaction, ro: true, reason: ReasonNotSelect},
	{name: "commit prepared", sql: "commit prepared 'x'", kind: KindTransaction, unknown: true, reason: ReasonNotSelect},
	{name: "set", sql: "set search_path to a, public", kind: KindSet, ro: true, reason: ReasonNotSelect},
	{name: "reset all", sql: "reset all", kind: KindSet, ro: true, reason: ReasonNotSelect},
	{name: "show", sql: "show work_mem", kind: KindSet, ro: true, reason: ReasonNotSelect},
	{name: "discard", sql: "discard all", kind: KindSet, ro: true, reason: ReasonNotSelect},
	{name: "set constraints", sql: "set constraints all immediate", kind: KindSet, ro: true, reason: ReasonNotSelect},
	{name: "listen", sql: "listen c", kind: KindOther, ro: true, reason: ReasonNotSelect},
	{name: "unlisten", sql: "unlisten *", kind: KindOther, ro: true, reason: ReasonNotSelect},
	{name: "notify", sql: "notify c, 'x'", kind: KindOther, reason: ReasonNotSelect},

	// Prepared statements and cursors.
	{name: "prepare select", sql: "prepare p as select * from t", kind: KindOther, ro: true, reads: "t", reason: ReasonNotSelect},
	{name: "prepare insert", sql: "prepare p (int) as insert into t values ($1)", kind: KindOther, writes: "t", reason: ReasonNotSelect},
	{name: "execute", sql: "execute p(1)", kind: KindOther, unknown: true, reason: ReasonNotSelect},
	{name: "deallocate", sql: "deallocate p", kind: KindOther, ro: true, reason: ReasonNotSelect},
	{name: "declare", sql: "declare c cursor for select * from t", kind: KindOther, ro: true, reads: "t", reason: ReasonNotSelect},
	{name: "declare for update", sql: "declare c cursor for select * from t for update", kind: KindOther, reads: "t", reason: ReasonNotSelect},
	{name: "fetch", sql: "fetch 10 from c", kind: KindOther, ro: true, reason: ReasonNotSelect},
	{name: "move", sql: "move next in c", kind: KindOther, ro: true, reason: ReasonNotSelect},
	{name: "close", sql: "close c", kind: KindOther, ro: true, reason: ReasonNotSelect},

	// Code that runs elsewhere.
	{name: "call", sql: "call p(1)", kind: KindCall, unknown: true, reason: ReasonNotSelect},
	{name: "do", sql: "do $$ begin delete from t; end $$", kind: KindDo, unknown: true, reason: ReasonNotSelect},
	{name: "load", sql: "load 'auto_explain'", kind: KindOther, unknown: true, reason: ReasonNotSelect},

	// Maintenance: not read-only, but no table's rows change.
	{name: "vacuum", sql: "vacuum full t", kind: KindOther, reason: ReasonNotSelect},
	{name: "analyze", sql: "analyze t", kind: KindOther, reason: ReasonNotSelect},
	{name: "cluster", sql: "cluster t using i", kind: KindOther, reason: ReasonNotSelect},
	{name: "reindex", sql: "reindex table t", kind: KindOther, reason: ReasonNotSelect},
	{name: "lock", sql: "lock table t in exclusive mode", kind: KindOther, reason: ReasonNotSelect},
	{name: "checkpoint", sql: "checkpoint", kind: KindOther, reason: ReasonNotSelect},
	{name: "alter system", sql: "alter system set work_mem = '1MB'", kind: KindOther, reason: ReasonNotSelect},

	// DDL with named targets.
	{name: "create table", sql: "create table t (a int default 0)", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "create table references", sql: "create table t (a int references u)", kind: KindDDL, reads: "u", writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "create partition", sql: "create table c partition of p for values in (1)", kind: KindDDL, writes: "c p", catalog: true, reason: ReasonNotSelect},
	{name: "create foreign partition", sql: "create foreign table c partition of p for values in (1) server s", kind: KindDDL, writes: "c p", catalog: true, reason: ReasonNotSelect},
	{name: "create table as", sql: "create table t as select * from u", kind: KindDDL, reads: "u", writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "create materialized view", sql: "create materialized view m as select * from u", kind: KindDDL, reads: "u", writes: "m", catalog: true, reason: ReasonNotSelect},
	{name: "create table as execute", sql: "create table t as execute p", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create view", sql: "create view v as select * from u", kind: KindDDL, writes: "v", catalog: true, reason: ReasonNotSelect},
	{name: "create or replace view", sql: "create or replace view v as select * from u", kind: KindDDL, writes: "v", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create index", sql: "create index concurrently i on s.t (lower(a)) where b > 0", kind: KindDDL, writes: "s.t", catalog: true, reason: ReasonNotSelect},
	{name: "alter table add column", sql: "alter table t add column c int", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "enable rls", sql: "alter table t enable row level security", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "alter table owner", sql: "alter table t owner to bob", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "attach partition", sql: "alter table p attach partition c for values in (1)", kind: KindDDL, writes: "c p", catalog: true, reason: ReasonNotSelect},
	{name: "detach partition", sql: "alter table p detach partition s.c", kind: KindDDL, writes: "p s.c", catalog: true, reason: ReasonNotSelect},
	{name: "inherit", sql: "alter table c inherit p", kind: KindDDL, writes: "c p", catalog: true, reason: ReasonNotSelect},
	{name: "drop column cascade", sql: "alter table t drop column c cascade", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create sequence", sql: "create sequence s", kind: KindDDL, writes: "s", catalog: true, reason: ReasonNotSelect},
	{name: "alter sequence", sql: "alter sequence s restart", kind: KindDDL, writes: "s", catalog: true, reason: ReasonNotSelect},
	{name: "drop table", sql: "drop table t", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "drop tables", sql: "drop table if exists a, s.b", kind: KindDDL, writes: "a s.b", catalog: true, reason: ReasonNotSelect},
	{name: "drop table cascade", sql: "drop table t cascade", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "drop view", sql: "drop view v", kind: KindDDL, writes: "v", catalog: true, reason: ReasonNotSelect},
	{name: "drop materialized view", sql: "drop materialized view m", kind: KindDDL, writes: "m", catalog: true, reason: ReasonNotSelect},
	{name: "drop index", sql: "drop index i", kind: KindDDL, writes: "i", catalog: true, reason: ReasonNotSelect},
	{name: "drop policy", sql: "drop policy p on s.t", kind: KindDDL, writes: "s.t", catalog: true, reason: ReasonNotSelect},
	{name: "drop trigger", sql: "drop trigger tr on t", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "grant on tables", sql: "grant select on t, s.u to bob", kind: KindDDL, writes: "t s.u", catalog: true, reason: ReasonNotSelect},
	{name: "revoke on table", sql: "revoke select on table t from bob", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "revoke column", sql: "revoke select (a) on t from bob cascade", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "create policy", sql: "create policy p on t using (owner = current_user and g in (select g from m))", kind: KindDDL, reads: "m", writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "alter policy", sql: "alter policy p on t using (true)", kind: KindDDL, writes: "t", catalog: true, reason: ReasonNotSelect},
	{name: "refresh", sql: "refresh materialized view concurrently m", kind: KindDDL, writes: "m", catalog: true, reason: ReasonNotSelect},
	{name: "comment", sql: "comment on table t is 'x'", kind: KindDDL, catalog: true, reason: ReasonNotSelect},
	{name: "create statistics", sql: "create statistics st on a, b from t", kind: KindDDL, catalog: true, reason: ReasonNotSelect},

	// DDL whose effect is not nameable.
	{name: "rename table", sql: "alter table t rename to u", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "rename column", sql: "alter table t rename column a to b", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "set schema", sql: "alter table t set schema s", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "alter composite type", sql: "alter type ty add attribute a int", kind: KindDDL, writes: "ty", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "alter enum", sql: "alter type e rename value 'a' to 'b'", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create type", sql: "create type ty as (a int)", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "drop function", sql: "drop function f(int)", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "drop schema cascade", sql: "drop schema s cascade", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create function", sql: "create function f() returns int as $$ select 1 $$ language sql", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "replace function atomic", sql: "create or replace function f() returns int begin atomic insert into t values (1); select 1; end", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "alter function", sql: "alter function f() immutable", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create trigger", sql: "create trigger tr after insert on t for each row execute function f()", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create rule", sql: "create rule r as on insert to t do instead nothing", kind: KindDDL, writes: "t", unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create extension", sql: "create extension pgcrypto", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create schema", sql: "create schema s create table t (a int)", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "alter default privileges", sql: "alter default privileges grant select on tables to bob", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "grant all tables in schema", sql: "grant select on all tables in schema s to bob", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "grant on function", sql: "grant execute on function f() to bob", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "grant usage on schema", sql: "grant usage on schema s to bob", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "grant role", sql: "grant admin to bob", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "alter role", sql: "alter role bob bypassrls", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "alter role set", sql: "alter role bob set search_path = x", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "reassign owned", sql: "reassign owned by a to b", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "security label", sql: "security label on table t is 'x'", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "drop database", sql: "drop database d", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
	{name: "create subscription", sql: "create subscription s connection 'x' publication p", kind: KindDDL, unknown: true, catalog: true, reason: ReasonNotSelect},
}

func names[T ~struct{ Schema, Name string }](list []T) string {
	parts := make([]string, len(list))
	for i, n := range list {
		parts[i] = Table(n).String()
	}
	return strings.Join(parts, " ")
}

func TestAnalyze(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range analyzeCases {
		if seen[tc.name] {
			t.Fatalf("two cases named %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			info := Analyze(tc.sql)
			if info.Unparsed || len(info.Statements) != 1 {
				t.Fatalf("Analyze(%q): Unparsed %v, %d statements", tc.sql, info.Unparsed, len(info.Statements))
			}
			st := info.Statements[0]
			got := analyzeCase{
				name: tc.name, sql: tc.sql, kind: st.Kind, ro: st.ReadOnly,
				reads: names(st.Reads), writes: names(st.Writes),
				unknown: st.WritesUnknown, catalog: st.Catalog, reason: info.NotCacheable,
			}
			if got != tc {
				t.Errorf("Analyze(%q)\n got %+v\nwant %+v", tc.sql, got, tc)
			}
			// The text's summary is its one statement's.
			if info.ReadOnly != st.ReadOnly || info.WritesUnknown != st.WritesUnknown ||
				info.Catalog != st.Catalog || names(info.Writes) != names(st.Writes) {
				t.Errorf("Analyze(%q): summary %+v does not match the statement %+v", tc.sql, info, st)
			}
		})
	}
}

// TestAnalyzeLists checks the function, operator and type lists, which the
// proxy checks for volatility on the backend.
func TestAnalyzeLists(t *testing.T) {
	for _, tc := range []struct {
		sql, funcs, ops, types string
	}{
		{"select nextval('s')", "nextval", "", ""},
		{"select count(*), row_number() over (), pg_catalog.lower(x), lower(y) from t", "count lower row_number pg_catalog.lower", "", ""},
		{"select * from generate_series(1, 3)", "generate_series", "", ""},
		{"select system_user", "pg_catalog.system_user", "", ""},
		{"select f(g(h(1)))", "f g h", "", ""},
		{"select * from t where x in (select my.f(y) from u)", "my.f", "=", ""},
		{"select * from t where x = any($1) order by a using <", "", "< =", ""},
		{"select a operator(pg_catalog.+) b, a || b, a like b, a not ilike b", "", "!~~* || ~~ pg_catalog.+", ""},
		{"select nullif(a, b), a is distinct from b, a in (1, 2), a not in (3)", "", "<> =", ""},
		{"select a between 1 and 2, b not between 3 and 4", "", "< <= > >=", ""},
		{"select a < all (select b from u), a similar to 'x'", "pg_catalog.similar_to_escape", "< ~", ""},
		{"select x::int, y::my.ty, 'a'::text[], cast(z as timestamptz)", "", "", "text timestamptz my.ty pg_catalog.int4"},
		{"select * from f() as x(a mytype)", "f", "", "mytype"},
		{"insert into t values (now())", "now", "", ""},
		{"update t set x = lower(x) where y > 0", "lower", ">", ""},
		{"explain select lower(x)::text from t where a = 1", "lower", "=", "text"},
		{"prepare p as select upper(x) from t", "upper", "", ""},
		{"select array_agg(x order by y) filter (where z > 0) from t", "array_agg", ">", ""},
		{"call p(f(1))", "f p", "", ""},
	} {
		info := Analyze(tc.sql)
		if len(info.Statements) != 1 {
			t.Fatalf("Analyze(%q): %d statements", tc.sql, len(info.Statements))
		}
		st := info.Statements[0]
		if got := names(st.Funcs); got != tc.funcs {
			t.Errorf("Analyze(%q).Funcs = %q, want %q", tc.sql, got, tc.funcs)
		}
		if got := names(st.Operators); got != tc.ops {
			t.Errorf("Analyze(%q).Operators = %q, want %q", tc.sql, got, tc.ops)
		}
		if got := names(st.Types); got != tc.types {
			t.Errorf("Analyze(%q).Types = %q, want %q", tc.sql, got, tc.types)
		}
	}
}

// TestAnalyzeFlags checks the flags behind the reasons one by one, where a
// reason earlier in the order would hide them.
func TestAnalyzeFlags(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		flag func(Statement) bool
		want bool
	}{
		{"select * from t for update", func(s Statement) bool { return s.Locking }, true},
		{"with w as (select * from t for update) select * from w", func(s Statement) bool { return s.Locking }, true},
		{"select * from t", func(s Statement) bool { return s.Locking }, false},
		{"with w as (merge into t using s on true when matched then delete) select 1", func(s Statement) bool { return s.ModifyingCTE }, true},
		{"with w as (select 1) select * from w", func(s Statement) bool { return s.ModifyingCTE }, false},
		{"select 1 into t", func(s Statement) bool { return s.SelectInto }, true},
		{"create table t as select 1", func(s Statement) bool { return s.SelectInto }, false},
		{"insert into t values (current_date)", func(s Statement) bool { return s.ValueFuncs }, true},
		{"select session_user", func(s Statement) bool { return s.ValueFuncs }, true},
		{"select current_catalog, current_schema", func(s Statement) bool { return s.ValueFuncs }, true},
		{"update t set d = 'now'", func(s Statement) bool { return s.TimeLiteral }, true},
		{"select 'epoch'::timestamptz, 'infinity'::date, 'allballs'::time", func(s Statement) bool { return s.TimeLiteral }, false},
		{"delete from pg_temp.t", func(s Statement) bool { return s.TempTables }, true},
		{"select * from pg_temp_3.t", func(s Statement) bool { return s.TempTables }, true},
		{"insert into t select * from pg_stat_activity", func(s Statement) bool { return s.SystemTables }, true},
		{"select * from t where oid = 'f'::pg_catalog.regproc", func(s Statement) bool { return s.SystemTables }, true},
		{"select * from t where oid = 'f'::my.regproc", func(s Statement) bool { return s.SystemTables }, false},
		{"select * from \"PG_CLASS\"", func(s Statement) bool { return s.SystemTables }, true},
		{"select * from t tablesample bernoulli (1) repeatable (7)", func(s Statement) bool { return s.TableSample }, true},
		{"explain select * from t tablesample bernoulli (1)", func(s Statement) bool { return s.TableSample }, true},
	} {
		info := Analyze(tc.sql)
		if len(info.Statements) != 1 {
			t.Fatalf("Analyze(%q): %d statements", tc.sql, len(info.Statements))
		}
		if got := tc.flag(info.Statements[0]); got != tc.want {
			t.Errorf("Analyze(%q): flag %v, want %v (%+v)", tc.sql, got, tc.want, info.Statements[0])
		}
	}
}

func TestAnalyzeMultipleStatements(t *testing.T) {
	for _, tc := range []struct {
		sql     string
		n       int
		ro      bool
		writes  string
		unknown bool
	}{
		{"select 1; select 2", 2, true, "", false},
		{"insert into a values (1); update b set x = 1; select * from c", 3, false, "a b", false},
		{"begin; delete from t; insert into t values (1); commit", 4, false, "t", false},
		{"select 1; do $$ begin end $$", 2, false, "", true},
		{"set x.y = 1; truncate s.t", 2, false, "s.t", false},
	} {
		info := Analyze(tc.sql)
		if len(info.Statements) != tc.n || info.NotCacheable != ReasonMultipleStatements ||
			info.ReadOnly != tc.ro || names(info.Writes) != tc.writes || info.WritesUnknown != tc.unknown ||
			info.WritesAnything() != (tc.writes != "" || tc.unknown) {
			t.Errorf("Analyze(%q) = %+v\nwant %d statements, ro %v, writes %q, unknown %v",
				tc.sql, info, tc.n, tc.ro, tc.writes, tc.unknown)
		}
	}

	info := Analyze("SELECT 1; /* x */ select * from t where id = 42 ;")
	for i, text := range []string{"SELECT 1", "select * from t where id = 42"} {
		want, err := pg_query.FingerprintToUInt64(text)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Statements[i].Fingerprint; got != want || got == 0 {
			t.Errorf("statement %d: fingerprint %d, want that of %q: %d", i, got, text, want)
		}
	}
	if info.Fingerprint == 0 || info.Fingerprint == info.Statements[0].Fingerprint {
		t.Errorf("text fingerprint %d: want the whole text's", info.Fingerprint)
	}
}

// TestStatementFingerprint: a text's one statement gets the text's own
// fingerprint, which must be the statement's alone (comments, semicolons and
// hints around it do not count).
func TestStatementFingerprint(t *testing.T) {
	for _, tc := range analyzeCases {
		info := Analyze(tc.sql)
		raw, err := pg_query.Parse(tc.sql)
		if err != nil {
			t.Fatal(err)
		}
		text, ok := statementText(tc.sql, raw.GetStmts()[0])
		if !ok {
			t.Fatalf("%q: no statement text", tc.sql)
		}
		want, err := pg_query.FingerprintToUInt64(text)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Statements[0].Fingerprint; got != want || got != info.Fingerprint {
			t.Errorf("%q: statement fingerprint %d, text %d, want %d", tc.sql, got, info.Fingerprint, want)
		}
	}
	a := Analyze("/* pgsidecar:ttl=1s */ select * from t where id = 1;")
	b := Analyze("select * from t where id = 1")
	if a.Fingerprint != b.Fingerprint {
		t.Errorf("comments change the fingerprint: %d != %d", a.Fingerprint, b.Fingerprint)
	}
}

// TestFingerprintIgnoresConstants pins down why Fingerprint is not a cache
// key: pg_query's fingerprint leaves out constant values.
func TestFingerprintIgnoresConstants(t *testing.T) {
	for _, pair := range [][2]string{
		{"select * from t where id = 1", "select * from t where id = 2"},
		{"select 1", "select 'x'::int, 2"},
	} {
		if a, b := Analyze(pair[0]).Fingerprint, Analyze(pair[1]).Fingerprint; a != b {
			t.Errorf("%q and %q: fingerprints %d and %d differ; the documentation says they are equal", pair[0], pair[1], a, b)
		}
	}
}

func TestAnalyzeUnparsed(t *testing.T) {
	for _, sql := range []string{"selec 1", "select (", "select 'unterminated", "select * from t where", "\x00", "select 1; selec 2"} {
		info := Analyze(sql)
		if !info.Unparsed || info.NotCacheable != ReasonUnparsed || len(info.Statements) != 0 ||
			!info.WritesUnknown || !info.Catalog || info.ReadOnly || info.Fingerprint != 0 || !info.WritesAnything() {
			t.Errorf("Analyze(%q) = %+v, want Unparsed and the worst", sql, info)
		}
	}
	// Hints are read from a text the parser rejects, when its lexer can.
	if info := Analyze("/* pgsidecar:nocache */ selec 1"); !info.Unparsed || !info.Hints.NoCache {
		t.Errorf("unparsed text with a hint: %+v", info)
	}
}

func TestAnalyzeEmpty(t *testing.T) {
	for _, sql := range []string{"", ";", " ;; ", "-- only a comment", "/* c */ ;"} {
		info := Analyze(sql)
		if info.Unparsed || info.NotCacheable != ReasonEmpty || len(info.Statements) != 0 ||
			!info.ReadOnly || info.WritesAnything() || info.Catalog || info.Cacheable() {
			t.Errorf("Analyze(%q) = %+v, want empty and read-only", sql, info)
		}
	}
}

func TestReasons(t *testing.T) {
	reasons := Reasons()
	known := map[string]bool{}
	for _, r := range reasons {
		if r == "" || known[r] || strings.ToLower(r) != r || strings.ContainsAny(r, " -.") {
			t.Errorf("reason %q: empty, repeated or not snake_case", r)
		}
		known[r] = true
	}
	for _, tc := range analyzeCases {
		if tc.reason != "" && !known[tc.reason] {
			t.Errorf("case %q: reason %q not in Reasons()", tc.name, tc.reason)
		}
	}
	Reasons()[0] = "changed"
	if Reasons()[0] != ReasonUnparsed {
		t.Error("Reasons shares its slice")
	}
}

func TestKindString(t *testing.T) {
	seen := map[string]Kind{}
	for k := KindOther; k <= KindExplain; k++ {
		s := k.String()
		if s == "" || strings.ToLower(s) != s {
			t.Errorf("Kind(%d).String() = %q", k, s)
		}
		if prev, ok := seen[s]; ok {
			t.Errorf("Kind(%d) and Kind(%d) are both %q", prev, k, s)
		}
		seen[s] = k
	}
	if got := Kind(200).String(); got != "other" {
		t.Errorf("Kind(200).String() = %q", got)
	}
}

func TestHasTimeWord(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"now", true}, {"NOW", true}, {" Now ", true}, {"now()", true}, {"today 10:00", true},
		{"tomorrow+1", true}, {"Yesterday", true}, {"2024-01-01 now", true}, {"énow", true},
		{"snow", false}, {"known", false}, {"nowhere", false}, {"todays", false},
		{"epoch", false}, {"infinity", false}, {"allballs", false}, {"2024-01-01", false},
		{"", false}, {"no", false}, {"n0w", false},
	} {
		if got := HasTimeWord(tc.s); got != tc.want {
			t.Errorf("HasTimeWord(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { HasTimeWord("2024-01-01 12:00 yesterday") }); allocs != 0 {
		t.Errorf("HasTimeWord allocates %v times", allocs)
	}
}

// checkInfo checks what must hold of every Info, whatever the text.
func checkInfo(t *testing.T, sql string, info *Info) {
	t.Helper()
	known := slices.Contains(Reasons(), info.NotCacheable) || info.NotCacheable == ""
	if !known {
		t.Fatalf("%q: unknown reason %q", sql, info.NotCacheable)
	}
	if info.Unparsed && (info.NotCacheable != ReasonUnparsed || len(info.Statements) != 0 || !info.WritesUnknown || info.ReadOnly) {
		t.Fatalf("%q: Unparsed but %+v", sql, info)
	}
	if info.Cacheable() {
		if len(info.Statements) != 1 {
			t.Fatalf("%q: cacheable with %d statements", sql, len(info.Statements))
		}
		st := info.Statements[0]
		if st.Kind != KindSelect || !st.ReadOnly || st.WritesUnknown || len(st.Writes) != 0 || st.Catalog ||
			st.Locking || st.ModifyingCTE || st.SelectInto || st.ValueFuncs || st.TimeLiteral ||
			st.SystemTables || st.TempTables || st.TableSample || info.Hints.NoCache {
			t.Fatalf("%q: cacheable but %+v", sql, st)
		}
	}
	ro, unknown, catalog := !info.Unparsed, info.Unparsed, info.Unparsed
	for _, st := range info.Statements {
		if st.ReadOnly && (len(st.Writes) != 0 || st.WritesUnknown || st.Catalog || st.Locking) {
			t.Fatalf("%q: ReadOnly yet %+v", sql, st)
		}
		for _, list := range [][]Table{st.Reads, st.Writes} {
			if !isSortedSet(list) {
				t.Fatalf("%q: list %v not sorted or repeats", sql, list)
			}
		}
		for _, list := range [][]Func{st.Funcs, st.Operators, st.Types} {
			if !isSortedSet(list) {
				t.Fatalf("%q: list %v not sorted or repeats", sql, list)
			}
		}
		ro = ro && st.ReadOnly
		unknown = unknown || st.WritesUnknown
		catalog = catalog || st.Catalog
	}
	if info.ReadOnly != ro || info.WritesUnknown != unknown || info.Catalog != catalog || !isSortedSet(info.Writes) {
		t.Fatalf("%q: summary %+v does not sum up the statements", sql, info)
	}
	if info.Hints.TTL < 0 || len(info.Hints.Errors) > maxHintErrors {
		t.Fatalf("%q: hints %+v", sql, info.Hints)
	}
}

func isSortedSet[T ~struct{ Schema, Name string }](list []T) bool {
	for i := 1; i < len(list); i++ {
		a, b := Table(list[i-1]), Table(list[i])
		if a.Schema > b.Schema || (a.Schema == b.Schema && a.Name >= b.Name) {
			return false
		}
	}
	return true
}

func TestAnalyzeInvariants(t *testing.T) {
	for _, tc := range analyzeCases {
		checkInfo(t, tc.sql, Analyze(tc.sql))
	}
	for _, tc := range effectsCases {
		checkInfo(t, tc.sql, Analyze(tc.sql))
	}
}

func FuzzAnalyze(f *testing.F) {
	for _, tc := range analyzeCases {
		f.Add(tc.sql)
	}
	for _, tc := range effectsCases {
		f.Add(tc.sql)
	}
	for _, h := range hintCases {
		f.Add(h.sql)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		checkInfo(t, sql, Analyze(sql))
	})
}

func BenchmarkAnalyzeParse(b *testing.B) {
	const sql = "select a.x, count(*) from a join b on a.id = b.a_id where b.y > $1 group by a.x order by 2 desc limit 10"
	b.ReportAllocs()
	for b.Loop() {
		if Analyze(sql).NotCacheable != "" {
			b.Fatal("wrong answer")
		}
	}
}

func TestReadNames(t *testing.T) {
	info := Analyze(`select * from b.t join a.t using (id) join u on true where exists (select 1 from "V")`)
	if got, want := info.ReadNames, []string{"V", "t", "u"}; !slices.Equal(got, want) {
		t.Errorf("ReadNames = %q, want %q", got, want)
	}
	if got := Analyze("select 1").ReadNames; len(got) != 0 {
		t.Errorf("ReadNames of select 1 = %q", got)
	}
}

func TestTimeLiteralFromCastOfAnExpression(t *testing.T) {
	for q, want := range map[string]bool{
		"select ('n' || 'ow')::timestamptz":                 true,
		"select v::date from t":                             true,
		"select cast(v as timestamp with time zone) from t": true,
		"select '2020-01-01'::date":                         false,
		"select $1::timestamptz":                            false,
		"select v::text from t":                             false,
		"select 'now'::timestamptz":                         true,
	} {
		if got := Analyze(q).NotCacheable == ReasonTimeLiteral; got != want {
			t.Errorf("%s: time_literal = %v, want %v (%q)", q, got, want, Analyze(q).NotCacheable)
		}
	}
}
