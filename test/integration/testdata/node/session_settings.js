'use strict'
// Session settings: SET on one client is seen by that client's SHOW, for the
// rest of its session, and never by another client connected at the same
// time; SET LOCAL lasts until the end of the transaction.
//
// Env: PGSIDECAR_TEST_URL; NODEPG_SEARCH_PATH and NODEPG_TIMEZONE, the
// values to set (the Go test picks ones that differ from the defaults).

const { connect, emit, requireEnv, run } = require('./lib')

async function show(client) {
  const tz = (await client.query('SHOW TimeZone')).rows[0].TimeZone
  const sp = (await client.query('SHOW search_path')).rows[0].search_path
  return { timezone: tz, search_path: sp }
}

run(async () => {
  const searchPath = requireEnv('NODEPG_SEARCH_PATH')
  const timeZone = requireEnv('NODEPG_TIMEZONE')

  const a = await connect('nodepg-settings-a')
  try {
    const before = await show(a)
    await a.query(`SET search_path TO ${searchPath}`)
    await a.query(`SET TimeZone TO '${timeZone}'`)
    emit('settings', { client: 'a', step: 'before_set', ...before })
    emit('settings', { client: 'a', step: 'after_set', ...(await show(a)) })

    const b = await connect('nodepg-settings-b')
    try {
      emit('settings', { client: 'b', step: 'while_a_set', ...(await show(b)) })
      emit('settings', { client: 'a', step: 'after_b', ...(await show(a)) })
    } finally {
      await b.end()
    }

    await a.query('BEGIN')
    await a.query("SET LOCAL TimeZone TO 'UTC'")
    emit('settings', { client: 'a', step: 'set_local', ...(await show(a)) })
    await a.query('COMMIT')
    emit('settings', { client: 'a', step: 'after_commit', ...(await show(a)) })
  } finally {
    await a.end()
  }
})
