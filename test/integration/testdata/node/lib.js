'use strict'
// Helpers shared by the node-postgres scripts in this directory. Each script
// connects to PGSIDECAR_TEST_URL (set by test/integration/nodepg_test.go),
// writes one JSON object per line to stdout, each with a "check" field naming
// what it reports, and exits non-zero, with the stack on stderr, on any error
// it did not expect. Judging the values is the Go test's job.

const pg = require('pg')

function requireEnv(name) {
  const v = process.env[name]
  if (!v) {
    throw new Error(`${name} is not set`)
  }
  return v
}

function intEnv(name, fallback) {
  const v = process.env[name]
  if (v === undefined || v === '') {
    return fallback
  }
  const n = Number.parseInt(v, 10)
  if (!Number.isInteger(n) || n <= 0) {
    throw new Error(`${name}=${v}: want a positive integer`)
  }
  return n
}

// connect opens one pg.Client (one connection to the sidecar). The timeouts
// turn a proxy that hangs into an error naming the query, well inside the
// Go test's bound on the whole script.
async function connect(name) {
  const client = new pg.Client({
    connectionString: requireEnv('PGSIDECAR_TEST_URL'),
    application_name: name,
    connectionTimeoutMillis: 10000,
    query_timeout: 20000,
  })
  // An error outside a query (the connection lost between queries) is
  // emitted, not thrown: without a listener it would crash the process with
  // less context than this.
  client.on('error', (err) => fail(new Error(`${name}: connection error: ${err.message}`)))
  await client.connect()
  return client
}

function emit(check, fields) {
  process.stdout.write(JSON.stringify({ check, ...fields }) + '\n')
}

// queryError runs a query that must fail and returns what node-postgres
// reported: the SQLSTATE (null for a client-side error) and the message.
async function queryError(client, config) {
  try {
    await client.query(config)
  } catch (err) {
    return { code: err.code ?? null, message: err.message }
  }
  throw new Error(`query ${JSON.stringify(config)} succeeded; want an error`)
}

function fail(err) {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`)
  // Clients still open would keep the event loop, and so the process, alive.
  process.exit(1)
}

// run is each script's entry point.
function run(main) {
  main().catch(fail)
}

module.exports = { connect, emit, queryError, intEnv, requireEnv, run }
