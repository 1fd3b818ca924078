#!/usr/bin/env node
// node-postgres (npm `pg`) named prepared queries through pgtier in transaction mode (run by
// tests/tests/drivers.rs).
//
// pg prepares a named query once per connection (Parse with its first Bind) and then only
// Binds it: connections sharing server connections clash on the names unless the pooler
// renames them and prepares them wherever they run. Every connection here uses the same names
// for different texts, on purpose.
//
// Usage: node pg_driver.js HOST PORT USER DB [CONNECTIONS] [ITERATIONS]
// Prints "node-postgres OK ..." and exits 0 when every check passed.
'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

const [host, port, user, database, conns = '8', iters = '200'] = process.argv.slice(2);

async function worker(n, iterations) {
  const c = new Client({
    host,
    port: Number(port),
    user,
    database,
    connectionTimeoutMillis: 30000,
  });
  await c.connect();
  try {
    for (let i = 0; i < iterations; i++) {
      const r = await c.query({ name: 'add-one', text: 'SELECT $1::int + 1 AS v', values: [i] });
      assert.equal(r.rows[0].v, i + 1, `connection ${n} iteration ${i}`);
      // Same name on every connection, a different text on each.
      const mine = await c.query({
        name: 'mine',
        text: `SELECT $1::text || '-${n}' AS v`,
        values: [String(i)],
      });
      assert.equal(mine.rows[0].v, `${i}-${n}`);
      if (i % 10 === 0) {
        // Inside a transaction, with a write.
        await c.query('BEGIN');
        const t = await c.query({
          name: 'in-tx',
          text: 'SELECT count(*)::int AS v FROM generate_series(1, $1::int)',
          values: [n + 1],
        });
        assert.equal(t.rows[0].v, n + 1);
        await c.query('COMMIT');
        // A named query failing at execution stays prepared and works afterwards.
        await assert.rejects(
          c.query({ name: 'div', text: 'SELECT 10 / $1::int AS v', values: [0] }),
          (e) => e.code === '22012'
        );
        const d = await c.query({ name: 'div', text: 'SELECT 10 / $1::int AS v', values: [2] });
        assert.equal(d.rows[0].v, 5);
      }
    }
  } finally {
    await c.end();
  }
}

async function main() {
  const n = Number(conns);
  const iterations = Number(iters);
  const t0 = Date.now();
  await Promise.all(Array.from({ length: n }, (_, k) => worker(k, iterations)));
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  console.log(`node-postgres OK: ${n} connections x ${iterations} iterations in ${secs} s`);
}

main().catch((e) => {
  console.error('node-postgres FAILED:', e);
  process.exit(1);
});
