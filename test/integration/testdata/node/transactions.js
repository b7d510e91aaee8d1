'use strict'
// Transactions through named statements: BEGIN ... COMMIT, BEGIN ...
// ROLLBACK, and an error part-way through a transaction, followed by
// ROLLBACK and more work on the same connection.
//
// Env: PGSIDECAR_TEST_URL; NODEPG_TABLE, a table (id int primary key,
// v text) that the Go test created and reads afterwards.

const { connect, emit, queryError, requireEnv, run } = require('./lib')

run(async () => {
  const table = requireEnv('NODEPG_TABLE')
  const ins = (id, v) => ({ name: 'ins', text: `INSERT INTO ${table} (id, v) VALUES ($1, $2) RETURNING id`, values: [id, v] })
  const count = (ids) => ({ name: 'count', text: `SELECT count(*)::int AS n FROM ${table} WHERE id = ANY($1::int[])`, values: [ids] })
  const pid = { name: 'pid', text: 'SELECT pg_backend_pid() AS pid' }
  const div = (d) => ({ name: 'div', text: 'SELECT 100 / $1::int AS q', values: [d] })

  const client = await connect('nodepg-transactions')
  try {
    // Every statement of a transaction must run on one backend: the pids
    // seen inside it must all be the same.
    const tags = []
    const pids = []
    const ids = []
    tags.push((await client.query('BEGIN')).command)
    ids.push((await client.query(ins(1, 'committed'))).rows[0].id)
    pids.push((await client.query(pid)).rows[0].pid)
    ids.push((await client.query(ins(2, 'committed'))).rows[0].id)
    pids.push((await client.query(pid)).rows[0].pid)
    tags.push((await client.query('COMMIT')).command)
    emit('commit', { tags, ids, pids, count: (await client.query(count([1, 2]))).rows[0].n })

    const rbTags = []
    rbTags.push((await client.query('BEGIN')).command)
    const inside = (await client.query(ins(3, 'rolled back'))).rows[0].id
    const seenInside = (await client.query(count([3]))).rows[0].n
    rbTags.push((await client.query('ROLLBACK')).command)
    emit('rollback', { tags: rbTags, inserted: inside, count_inside: seenInside, count_after: (await client.query(count([3]))).rows[0].n })

    // The named statement "div" is parsed, then fails at Execute: the
    // transaction is aborted, and every statement until ROLLBACK fails.
    await client.query('BEGIN')
    await client.query(ins(4, 'aborted'))
    const divErr = await queryError(client, div(0))
    const abortedErr = await queryError(client, ins(5, 'aborted'))
    const rollbackTag = (await client.query('ROLLBACK')).command
    const afterIns = (await client.query(ins(6, 'after the error'))).rows[0].id
    const afterDiv = (await client.query(div(4))).rows[0].q
    emit('error_in_transaction', {
      division: divErr,
      aborted: abortedErr,
      rollback_tag: rollbackTag,
      count_aborted: (await client.query(count([4, 5]))).rows[0].n,
      inserted_after: afterIns,
      div_after: afterDiv,
    })
  } finally {
    await client.end()
  }
})
