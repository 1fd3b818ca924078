// Node `postgres` (porsager's postgres.js, npm) through pgtier in transaction mode; run by
// tests/tests/drivers_more.rs.
//
// postgres.js prepares every tagged-template query as a named statement on each connection
// (prepare: true, the default), pipelines queries, fetches the array types on connect, and
// cancels with a CancelRequest (query.cancel()).
//
// Usage: node postgresjs_driver.mjs HOST PORT USER DB PASSWORD [WORKERS] [OPS]
// Prints "postgres.js OK ..." and exits 0 when every check passed.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import postgres from 'postgres';

const [host, port, user, database, password, workersArg = '20', opsArg = '200'] = process.argv.slice(2);
const WORKERS = Number(workersArg);
const OPS = Number(opsArg);
const version = JSON.parse(readFileSync(new URL('./node_modules/postgres/package.json', import.meta.url))).version;

function connect(max = 1) {
  return postgres({ host, port: Number(port), user, pass: password, database, max, ssl: false,
    connect_timeout: 30, idle_timeout: 0, onnotice: () => {} });
}

async function expectError(code, f) {
  try {
    await f();
  } catch (e) {
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    return;
  }
  assert.fail(`expected SQLSTATE ${code}, got no error`);
}

async function main() {
  const t0 = Date.now();
  console.log(`postgres.js ${version}`);
  const sql = connect(1);
  await sql.unsafe('DROP TABLE IF EXISTS pgjs_items; CREATE TABLE pgjs_items (id int PRIMARY KEY, v text NOT NULL)');
  const multi = await sql.unsafe('SELECT 1 AS a; SELECT 2 AS b');
  assert.equal(multi.length, 2, 'two results of a simple query');
  const [{ v }] = await sql`SELECT ${41}::int + 1 AS v`;
  assert.equal(v, 42);
  for (let i = 0; i < 10; i++) {
    const [r] = await sql`SELECT ${i}::int * 3 AS v, ${'p' + i}::text AS t`;
    assert.deepEqual([r.v, r.t], [i * 3, 'p' + i]);
  }
  console.log('simple and parameterized queries: ok');

  // Routing: the write on the primary and read-your-writes on one (reserved) connection; a
  // connection that has not written reads from a replica.
  const res = await sql.reserve();
  const [w] = await res`INSERT INTO pgjs_items VALUES (${1}, ${'first'}) RETURNING pg_is_in_recovery() AS r`;
  assert.equal(w.r, false, 'an INSERT ran on a replica');
  const [back] = await res`SELECT v FROM pgjs_items WHERE id = ${1}`;
  assert.equal(back?.v, 'first', 'read-your-writes');
  res.release();
  const reader = connect(1);
  const deadline = Date.now() + 20000;
  for (;;) {
    const [r] = await reader`SELECT pg_is_in_recovery() AS r`;
    if (r.r) break;
    assert.ok(Date.now() < deadline, 'no autocommit read went to a replica in 20 s');
    await new Promise((ok) => setTimeout(ok, 50));
  }
  await reader.end();
  console.log('routing: ok');

  // Transactions: a throw rolls back, an error and recovery, commit.
  await assert.rejects(sql.begin(async (tx) => {
    await tx`INSERT INTO pgjs_items VALUES (${2}, ${'rolled back'})`;
    const [r] = await tx`SELECT count(*)::int AS n FROM pgjs_items WHERE id = ${2}`;
    assert.equal(r.n, 1);
    throw new Error('application error');
  }), /application error/);
  assert.equal((await sql`SELECT count(*)::int AS n FROM pgjs_items WHERE id = ${2}`)[0].n, 0);
  await expectError('22012', () => sql.begin(async (tx) => {
    await tx`INSERT INTO pgjs_items VALUES (${3}, ${'lost'})`;
    await tx`SELECT 10 / ${0}::int AS v`;
  }));
  await sql.begin(async (tx) => {
    await tx`INSERT INTO pgjs_items VALUES (${3}, ${'x'})`;
    await expectError('22012', () => tx`SELECT 10 / ${0}::int AS v`);
    await expectError('25P02', () => tx`SELECT 1 AS v`);
  }).then(() => assert.fail('the aborted transaction committed'), // postgres.js rejects begin() with the transaction's first error.
    (e) => assert.ok(['22012', '25P02'].includes(e.code), `${e.code}: ${e.message}`));
  assert.equal((await sql`SELECT count(*)::int AS n FROM pgjs_items WHERE id = ${3}`)[0].n, 0);
  await sql.begin(async (tx) => {
    await tx`INSERT INTO pgjs_items VALUES (${4}, ${'committed'})`;
  });
  assert.equal((await sql`SELECT v FROM pgjs_items WHERE id = ${4}`)[0].v, 'committed');
  console.log('transactions: ok');

  // COPY in and out, and a failing COPY.
  const lines = [];
  for (let i = 1000; i < 1500; i++) lines.push(`${i},copied ${i}\n`);
  await pipeline(Readable.from(lines), await sql`COPY pgjs_items (id, v) FROM STDIN WITH (FORMAT csv)`.writable());
  let text = '';
  for await (const chunk of await sql`COPY (SELECT id, v FROM pgjs_items WHERE id >= 1000 ORDER BY id) TO STDOUT WITH (FORMAT csv)`.readable()) {
    text += chunk.toString();
  }
  assert.equal(text.split('\n').length - 1, 500);
  assert.ok(text.startsWith('1000,copied 1000\n'));
  await expectError('23505', async () =>
    pipeline(Readable.from(['1000,dup\n']), await sql`COPY pgjs_items (id, v) FROM STDIN WITH (FORMAT csv)`.writable()));
  assert.equal((await sql`SELECT count(*)::int AS n FROM pgjs_items WHERE id >= 1000`)[0].n, 500);
  console.log('copy: ok');

  // Cancel: query.cancel() sends a CancelRequest once the query runs.
  const started = Date.now();
  const q = sql`SELECT pg_sleep(30)`;
  const done = q.then(() => 'not cancelled', (e) => e.code);
  let code;
  while (code === undefined) {
    await new Promise((ok) => setTimeout(ok, 100));
    q.cancel();
    code = await Promise.race([done, new Promise((ok) => setTimeout(() => ok(undefined), 200))]);
    assert.ok(Date.now() - started < 20000, 'cancel did not arrive in 20 s');
  }
  assert.equal(code, '57014');
  assert.equal((await sql`SELECT 1 AS v`)[0].v, 1);
  console.log('cancel: ok');
  await sql.end();

  // 30 connections, each preparing its texts in its own order, reused across 20 transactions.
  await Promise.all(Array.from({ length: 30 }, async (_, k) => {
    const c = connect(1);
    for (let round = 0; round < 20; round++) {
      await c.begin(async (tx) => {
        for (let q = 0; q < 3; q++) {
          const i = (q + k + round) % 3;
          if (i === 0) assert.equal((await tx`SELECT ${round}::int * 2 AS v`)[0].v, round * 2);
          else if (i === 1) assert.equal((await tx`SELECT ${String(round)}::text || ${'-' + k}::text AS v`)[0].v, `${round}-${k}`);
          else assert.equal(Number((await tx`SELECT ${round}::int - 1 AS v`)[0].v), round - 1);
        }
      });
    }
    await c.end();
  }));
  console.log('named statements: 30 connections x 20 transactions: ok');

  // WORKERS workers on a postgres.js pool of WORKERS connections, OPS operations each.
  const pool = connect(WORKERS);
  await pool.unsafe('DROP TABLE IF EXISTS pgjs_load; CREATE TABLE pgjs_load (w int, i int, v text, PRIMARY KEY (w, i))');
  const onReplica = await Promise.all(Array.from({ length: WORKERS }, async (_, w) => {
    let on = 0;
    for (let i = 0; i < OPS; i++) {
      switch (i % 4) {
        case 0: {
          const c = await pool.reserve();
          try {
            await c`INSERT INTO pgjs_load VALUES (${w}, ${i}, ${`${w}/${i}`})`;
            const [r] = await c`SELECT v FROM pgjs_load WHERE w = ${w} AND i = ${i}`;
            assert.equal(r?.v, `${w}/${i}`, `stale read ${w}/${i}`);
          } finally {
            c.release();
          }
          break;
        }
        case 1:
          if ((await pool`SELECT pg_is_in_recovery() AS r`)[0].r) on++;
          break;
        case 2:
          await pool.begin(async (tx) => {
            await tx`UPDATE pgjs_load SET v = v || '+' WHERE w = ${w} AND i = ${i - 2}`;
            const [r] = await tx`SELECT v FROM pgjs_load WHERE w = ${w} AND i = ${i - 2}`;
            assert.ok(r.v.endsWith('+'), `update ${w}/${i}`);
          });
          break;
        default:
          assert.equal((await pool`SELECT count(*)::int AS n FROM generate_series(1, ${i}::int)`)[0].n, i);
      }
    }
    return on;
  }));
  const [{ n }] = await pool`SELECT count(*)::int AS n FROM pgjs_load`;
  const expect = Math.ceil(OPS / 4) * WORKERS;
  assert.equal(n, expect, `rows ${n}, expected ${expect}`);
  await pool.end();
  const reads = Math.floor((OPS + 2) / 4) * WORKERS;
  console.log(`concurrency: ${WORKERS} workers x ${OPS} operations, 0 errors, ${onReplica.reduce((a, b) => a + b, 0)} of ${reads} autocommit reads on replicas`);
  console.log(`postgres.js OK: ${WORKERS} workers x ${OPS} operations in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

main().catch((e) => {
  console.error('postgres.js FAILED:', e);
  process.exit(1);
});
