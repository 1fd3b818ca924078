#!/usr/bin/env node
// node-postgres (npm `pg`) listeners through pgtier in transaction mode (run by
// tests/tests/listen_notify.rs): pgtier answers their LISTEN itself.
//
// Usage: node pg_listen.js HOST PORT USER DB COUNT
// Two clients LISTEN (client.on('notification')); COUNT notifications are sent through pgtier
// by a third, each with the pid of the server that ran it. Each listener must get all of them,
// once each, in order. Prints "node-postgres listen OK ..." and exits 0.
'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

const [host, port, user, database, countArg = '100'] = process.argv.slice(2);
const count = Number(countArg);

function client() {
  return new Client({ host, port: Number(port), user, database, connectionTimeoutMillis: 30000 });
}

async function main() {
  const listeners = [client(), client()];
  const got = [[], []];
  for (const [i, c] of listeners.entries()) {
    await c.connect();
    c.on('notification', (n) => got[i].push([n.channel, n.payload, n.processId]));
    await c.query('LISTEN node_jobs');
  }
  const sender = client();
  await sender.connect();
  const sent = [];
  for (let i = 0; i < count; i++) {
    const payload = `job-${i}`;
    const r = await sender.query('SELECT pg_backend_pid() AS pid, pg_notify($1, $2)', ['node_jobs', payload]);
    sent.push(['node_jobs', payload, r.rows[0].pid]);
  }
  await sender.query("NOTIFY node_jobs, 'marker'");
  const deadline = Date.now() + 20000;
  while (got.some((g) => g.length < count + 1) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  for (const g of got) {
    assert.deepEqual(g.slice(0, count), sent);
    assert.equal(g.length, count + 1, 'each notification once');
    assert.equal(g[count][1], 'marker');
  }
  for (const c of [...listeners, sender]) {
    await c.end();
  }
  console.log(`node-postgres listen OK: 2 listeners each got ${count} notifications once, in order`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
