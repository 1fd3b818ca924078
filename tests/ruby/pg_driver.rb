# The Ruby `pg` gem (Debian's ruby-pg, libpq) through pgtier in transaction mode; run by
# tests/tests/drivers_more.rs.
#
# exec_params runs an unnamed statement (Parse/Bind/Execute/Sync in one go); prepare sends a
# named Parse and Sync on its own and exec_prepared only Bind/Execute: the pooler must keep the
# name (every connection here uses the same names for different texts) and prepare it on
# whichever server connection the later exec_prepared gets.
#
# Usage: ruby pg_driver.rb HOST PORT USER DB PASSWORD [WORKERS] [OPS]
# Prints "ruby-pg OK ..." and exits 0 when every check passed.
require 'pg'

HOST, PORT, USER, DB, PASSWORD = ARGV[0..4]
WORKERS = (ARGV[5] || 20).to_i
OPS = (ARGV[6] || 200).to_i

def connect
  PG.connect(host: HOST, port: PORT.to_i, user: USER, dbname: DB, password: PASSWORD,
             sslmode: 'disable', connect_timeout: 30)
end

def check(ok, what)
  raise "check failed: #{what}" unless ok
end

def sqlstate(err)
  err.result&.error_field(PG::PG_DIAG_SQLSTATE)
end

def expect_error(state)
  yield
  raise "expected SQLSTATE #{state}, got no error"
rescue PG::Error => e
  check(sqlstate(e) == state, "expected #{state}, got #{sqlstate(e)}: #{e.message}")
end

t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
c = connect
puts "pg gem #{PG::VERSION}, libpq #{PG.library_version}"

# Simple and parameterized queries.
c.exec('DROP TABLE IF EXISTS ruby_items; CREATE TABLE ruby_items (id int PRIMARY KEY, v text NOT NULL)')
r = c.exec('SELECT 1 AS a; SELECT 2 AS b')
check(r.getvalue(0, 0) == '2', 'simple query returns the last result')
check(c.exec_params('SELECT $1::int + 1', [41]).getvalue(0, 0) == '42', 'exec_params')
check(c.exec_params('SELECT $1::text || $2::text', %w[pg tier]).getvalue(0, 0) == 'pgtier', 'text params')
c.prepare('add', 'SELECT $1::int + $2::int')
10.times { |i| check(c.exec_prepared('add', [i, 1]).getvalue(0, 0) == (i + 1).to_s, "exec_prepared #{i}") }
expect_error('42P05') { c.prepare('add', 'SELECT 1') }
puts 'simple, exec_params, prepare: ok'

# Routing: the write on the primary, read-your-writes, a fresh connection reads from a replica.
r = c.exec_params('INSERT INTO ruby_items VALUES ($1, $2) RETURNING pg_is_in_recovery()', [1, 'first'])
check(r.getvalue(0, 0) == 'f', 'an INSERT ran on a replica')
check(c.exec_params('SELECT v FROM ruby_items WHERE id = $1', [1]).getvalue(0, 0) == 'first', 'read-your-writes')
rc = connect
deadline = Time.now + 20
until rc.exec('SELECT pg_is_in_recovery()').getvalue(0, 0) == 't'
  check(Time.now < deadline, 'no autocommit read went to a replica in 20 s')
  sleep 0.05
end
rc.close
puts 'routing: ok'

# Transactions: rollback, an error and recovery, commit.
c.exec('BEGIN')
c.exec_params('INSERT INTO ruby_items VALUES ($1, $2)', [2, 'rolled back'])
check(c.exec('SELECT pg_is_in_recovery()').getvalue(0, 0) == 'f', 'a transaction on a replica')
c.exec('ROLLBACK')
check(c.exec('SELECT count(*) FROM ruby_items WHERE id = 2').getvalue(0, 0) == '0', 'rolled back row')
c.exec('BEGIN')
c.exec_prepared('add', [1, 2])
expect_error('22012') { c.exec_params('SELECT 10 / $1::int', [0]) }
check(c.transaction_status == PG::PQTRANS_INERROR, 'transaction in error')
expect_error('25P02') { c.exec_prepared('add', [1, 2]) }
c.exec('ROLLBACK')
check(c.transaction_status == PG::PQTRANS_IDLE, 'idle after rollback')
check(c.exec_prepared('add', [2, 2]).getvalue(0, 0) == '4', 'prepared statement after the rollback')
c.transaction do |t|
  t.exec_params('INSERT INTO ruby_items VALUES ($1, $2)', [4, 'committed'])
end
begin
  c.transaction do |t|
    t.exec_params('INSERT INTO ruby_items VALUES ($1, $2)', [5, 'raised'])
    raise ArgumentError, 'application error'
  end
rescue ArgumentError
  nil
end
check(c.exec('SELECT string_agg(id::text, \',\' ORDER BY id) FROM ruby_items').getvalue(0, 0) == '1,4',
      'committed and rolled back rows')
puts 'transactions: ok'

# COPY in and out, and a failing COPY.
c.copy_data('COPY ruby_items (id, v) FROM STDIN WITH (FORMAT csv)') do
  (1000...1500).each { |i| c.put_copy_data("#{i},copied #{i}\n") }
end
lines = []
c.copy_data('COPY (SELECT id, v FROM ruby_items WHERE id >= 1000 ORDER BY id) TO STDOUT WITH (FORMAT csv)') do
  while (row = c.get_copy_data)
    lines << row
  end
end
check(lines.size == 500 && lines[0] == "1000,copied 1000\n", "COPY OUT: #{lines.size} #{lines[0].inspect}")
expect_error('23505') do
  c.copy_data('COPY ruby_items (id, v) FROM STDIN WITH (FORMAT csv)') { c.put_copy_data("1000,dup\n") }
end
check(c.exec('SELECT count(*) FROM ruby_items WHERE id >= 1000').getvalue(0, 0) == '500', 'rows after failed COPY')
puts 'copy: ok'

# Cancel: PG::Connection#cancel from another thread while the query runs.
started = Time.now
th = Thread.new do
  c.exec('SELECT pg_sleep(30)')
  :not_cancelled
rescue PG::QueryCanceled => e
  sqlstate(e)
end
result = nil
until result
  sleep 0.1
  c.cancel
  result = th.join(0.2)&.value
  check(Time.now - started < 20, 'cancel did not arrive in 20 s')
end
check(result == '57014', "cancel: #{result}")
check(c.exec('SELECT 1').getvalue(0, 0) == '1', 'connection after cancel')
puts 'cancel: ok'
c.close

# Named statements, the same names for other texts on each of 30 connections, reused across 20
# transactions each.
threads = (0...30).map do |k|
  Thread.new do
    cc = connect
    texts = { 'q1' => 'SELECT $1::int * 2', 'q2' => "SELECT $1::text || '-#{k}'", 'q3' => 'SELECT $1::bigint - 1' }
    names = texts.keys.rotate(k % 3)
    names.each { |n| cc.prepare(n, texts[n]) }
    20.times do |round|
      cc.transaction do |t|
        names.rotate(round % 3).each do |n|
          got = t.exec_prepared(n, [round]).getvalue(0, 0)
          want = { 'q1' => (round * 2).to_s, 'q2' => "#{round}-#{k}", 'q3' => (round - 1).to_s }[n]
          check(got == want, "conn #{k} round #{round} #{n}: #{got} != #{want}")
        end
      end
    end
    cc.close
  end
end
threads.each(&:join)
puts 'named statements: 30 connections x 20 transactions: ok'

# WORKERS threads, one connection each, OPS operations: 0 errors.
c = connect
c.exec('DROP TABLE IF EXISTS ruby_load; CREATE TABLE ruby_load (w int, i int, v text, PRIMARY KEY (w, i))')
replica_reads = Queue.new
threads = (0...WORKERS).map do |w|
  Thread.new do
    cc = connect
    cc.prepare('ins', 'INSERT INTO ruby_load VALUES ($1, $2, $3)')
    cc.prepare('get', 'SELECT v FROM ruby_load WHERE w = $1 AND i = $2')
    on_replica = 0
    OPS.times do |i|
      case i % 4
      when 0
        cc.exec_prepared('ins', [w, i, "#{w}/#{i}"])
        got = cc.exec_prepared('get', [w, i]).getvalue(0, 0)
        check(got == "#{w}/#{i}", "stale read #{w}/#{i}: #{got.inspect}")
      when 1
        on_replica += 1 if cc.exec('SELECT pg_is_in_recovery()').getvalue(0, 0) == 't'
      when 2
        cc.transaction do |t|
          t.exec_params("UPDATE ruby_load SET v = v || '+' WHERE w = $1 AND i = $2", [w, i - 2])
          check(t.exec_prepared('get', [w, i - 2]).getvalue(0, 0).end_with?('+'), "update #{w}/#{i}")
        end
      else
        check(cc.exec_params('SELECT count(*) FROM generate_series(1, $1::int)', [i]).getvalue(0, 0) == i.to_s,
              "count #{i}")
      end
    end
    cc.close
    replica_reads << on_replica
  end
end
threads.each(&:join)
rows = c.exec('SELECT count(*) FROM ruby_load').getvalue(0, 0).to_i
expect = (0...OPS).count { |i| (i % 4).zero? } * WORKERS
check(rows == expect, "rows #{rows}, expected #{expect}")
c.close
on_replica = 0
on_replica += replica_reads.pop until replica_reads.empty?
reads = (0...OPS).count { |i| i % 4 == 1 } * WORKERS
puts "concurrency: #{WORKERS} workers x #{OPS} operations, 0 errors, #{on_replica} of #{reads} autocommit reads on replicas"
printf("ruby-pg OK: %d workers x %d operations in %.1f s\n", WORKERS, OPS,
       Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0)
