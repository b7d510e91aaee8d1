'use strict'
// Named prepared statements, which node-postgres parses once per connection
// and then only binds: many clients sharing few backends, one name with two
// texts on two clients, and the name after DEALLOCATE and after DISCARD ALL.
//
// Env: PGSIDECAR_TEST_URL; NODEPG_CLIENTS and NODEPG_QUERIES (default 8 and
// 50) size the concurrent part.

const { connect, emit, queryError, intEnv, run } = require('./lib')

const GET_N = 'SELECT $1::int + 1 AS n, pg_backend_pid() AS pid'

// concurrent runs NODEPG_CLIENTS clients at once, each sending the same named
// statement NODEPG_QUERIES times with its own values. Each client connects,
// works and disconnects on its own, so that in session mode the clients the
// pool cannot serve yet simply wait for a backend.
async function concurrent() {
  const clients = intEnv('NODEPG_CLIENTS', 8)
  const queries = intEnv('NODEPG_QUERIES', 50)
  const results = await Promise.all(Array.from({ length: clients }, (_, c) => concurrentClient(c, queries)))
  for (const r of results) {
    emit('concurrent', r)
  }
}

async function concurrentClient(c, queries) {
  const client = await connect(`nodepg-concurrent-${c}`)
  try {
    let sum = 0
    let wrong = 0
    const pids = new Set()
    for (let j = 0; j < queries; j++) {
      const i = c * 1000 + j
      const res = await client.query({ name: 'get-n', text: GET_N, values: [i] })
      const { n, pid } = res.rows[0]
      if (n !== i + 1) {
        wrong++
      }
      sum += n
      pids.add(pid)
    }
    return { client: c, queries, sum, wrong, pids: [...pids] }
  } finally {
    await client.end()
  }
}

// sameName prepares "dup" with a different text (and result type) on each
// of two concurrently connected clients; each must keep getting its own.
async function sameName() {
  const x = await connect('nodepg-same-name-x')
  const y = await connect('nodepg-same-name-y')
  try {
    const got = { x: [], y: [] }
    for (let r = 0; r < 5; r++) {
      const [a, b] = await Promise.all([
        x.query({ name: 'dup', text: 'SELECT $1::int + 100 AS v', values: [r] }),
        y.query({ name: 'dup', text: "SELECT $1::text || '-y' AS v", values: [r] }),
      ])
      got.x.push(a.rows[0].v)
      got.y.push(b.rows[0].v)
    }
    emit('same_name', { client: 'x', values: got.x })
    emit('same_name', { client: 'y', values: got.y })
  } finally {
    await Promise.all([x.end(), y.end()])
  }
}

const DOUBLE = 'SELECT $1::int * 2 AS n'

// forgotten uses a named statement, makes the server forget it with the SQL
// in forget, and uses it again, twice. node-postgres remembers per
// connection which names it has parsed and does not notice the SQL, so it
// sends Bind without Parse. Then a new name, a plain query, and the same
// name on a new connection show what still works.
async function forgotten(check, name, forget) {
  const q = (v) => ({ name, text: DOUBLE, values: [v] })
  const client = await connect(`nodepg-${check}`)
  let out
  try {
    const before = (await client.query(q(21))).rows[0].n
    const forgetTag = (await client.query(forget)).command
    const first = await queryError(client, q(5))
    const again = await queryError(client, q(6))
    const otherName = (await client.query({ name: `${name}-2`, text: DOUBLE, values: [7] })).rows[0].n
    const plain = (await client.query('SELECT 1 AS one')).rows[0].one
    out = { before, forget_tag: forgetTag, first, again, other_name: otherName, plain }
  } finally {
    await client.end()
  }
  const fresh = await connect(`nodepg-${check}-fresh`)
  try {
    out.new_connection = (await fresh.query(q(9))).rows[0].n
  } finally {
    await fresh.end()
  }
  emit(check, out)
}

run(async () => {
  await concurrent()
  await sameName()
  await forgotten('deallocate', 'dbl', 'DEALLOCATE dbl')
  await forgotten('discard_all', 'dbl', 'DISCARD ALL')
})
