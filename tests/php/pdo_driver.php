<?php
// PHP PDO pgsql (Debian's php-pgsql, libpq) through pgtier in transaction mode, emulated
// prepares off; run by tests/tests/drivers_more.rs.
//
// With PDO::ATTR_EMULATE_PREPARES off, PDO prepares each statement as a named server-side
// statement (pdo_stmt_00000001, ... per connection: the same names for other texts on other
// connections), executes it with Bind/Execute, and sends a simple-query DEALLOCATE when the
// statement object goes away. PDO has no cancel API. Workers are processes (pcntl_fork).
//
// Usage: php pdo_driver.php HOST PORT USER DB PASSWORD [WORKERS] [OPS]
// Prints "pdo_pgsql OK ..." and exits 0 when every check passed.

[$_, $host, $port, $user, $db, $password] = $argv;
$workers = (int)($argv[6] ?? 20);
$ops = (int)($argv[7] ?? 200);

function connect(): PDO {
    global $host, $port, $user, $db, $password;
    return new PDO("pgsql:host=$host;port=$port;dbname=$db;sslmode=disable;connect_timeout=30", $user, $password, [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_EMULATE_PREPARES => false,
    ]);
}
function check(bool $ok, string $what): void {
    if (!$ok) throw new RuntimeException("check failed: $what");
}
function expect_error(string $state, callable $f): void {
    try { $f(); } catch (PDOException $e) {
        check($e->getCode() === $state, "expected $state, got {$e->getCode()}: {$e->getMessage()}");
        return;
    }
    throw new RuntimeException("expected SQLSTATE $state, got no error");
}
function one(PDO $c, string $sql, array $params = []) {
    $s = $c->prepare($sql);
    $s->execute($params);
    return $s->fetchColumn();
}
/// Runs $f($k) in $n child processes; fails if any child failed.
function fork_all(int $n, callable $f): array {
    $pids = [];
    $dir = sys_get_temp_dir() . '/pdo_driver_' . getmypid();
    @mkdir($dir);
    for ($k = 0; $k < $n; $k++) {
        $pid = pcntl_fork();
        if ($pid === 0) {
            try { file_put_contents("$dir/$k", (string)$f($k)); exit(0); }
            catch (Throwable $e) { fwrite(STDERR, "worker $k: $e\n"); exit(1); }
        }
        $pids[$k] = $pid;
    }
    $out = [];
    foreach ($pids as $k => $pid) {
        pcntl_waitpid($pid, $status);
        check(pcntl_wifexited($status) && pcntl_wexitstatus($status) === 0, "worker $k failed");
        $out[$k] = file_get_contents("$dir/$k");
        unlink("$dir/$k");
    }
    rmdir($dir);
    return $out;
}

try {
    $t0 = microtime(true);
    $c = connect();
    echo "PHP " . PHP_VERSION . ", libpq " . $c->getAttribute(PDO::ATTR_CLIENT_VERSION) . "\n";
    $c->exec('DROP TABLE IF EXISTS php_items; CREATE TABLE php_items (id int PRIMARY KEY, v text NOT NULL)');
    check($c->query('SELECT 40 + 2')->fetchColumn() == 42, 'simple query');
    check(one($c, 'SELECT ?::int + 1', [41]) == 42, 'parameterized');
    check(one($c, 'SELECT :a::text || :b::text', ['a' => 'pg', 'b' => 'tier']) === 'pgtier', 'named placeholders');
    $s = $c->prepare('SELECT ?::int * 3');
    for ($i = 0; $i < 10; $i++) { $s->execute([$i]); check($s->fetchColumn() == $i * 3, "reused statement $i"); }
    $s = null; // DEALLOCATE
    echo "simple and parameterized queries: ok\n";

    // Routing.
    check(one($c, 'INSERT INTO php_items VALUES (?, ?) RETURNING pg_is_in_recovery()', [1, 'first']) === false, 'INSERT on a replica');
    check(one($c, 'SELECT v FROM php_items WHERE id = ?', [1]) === 'first', 'read-your-writes');
    $r = connect();
    $deadline = microtime(true) + 20;
    while ($r->query('SELECT pg_is_in_recovery()')->fetchColumn() !== true) {
        check(microtime(true) < $deadline, 'no autocommit read went to a replica in 20 s');
        usleep(50000);
    }
    $r = null;
    echo "routing: ok\n";

    // Transactions.
    $c->beginTransaction();
    $c->prepare('INSERT INTO php_items VALUES (?, ?)')->execute([2, 'rolled back']);
    $c->rollBack();
    check(one($c, 'SELECT count(*) FROM php_items WHERE id = 2') == 0, 'rolled back row');
    $c->beginTransaction();
    $c->prepare('INSERT INTO php_items VALUES (?, ?)')->execute([3, 'lost']);
    expect_error('22012', fn() => one($c, 'SELECT 10 / ?::int', [0]));
    expect_error('25P02', fn() => one($c, 'SELECT 1'));
    $c->rollBack();
    check(one($c, 'SELECT count(*) FROM php_items WHERE id = 3') == 0, 'failed transaction row');
    $c->beginTransaction();
    $c->prepare('INSERT INTO php_items VALUES (?, ?)')->execute([4, 'committed']);
    $c->commit();
    check(one($c, 'SELECT v FROM php_items WHERE id = 4') === 'committed', 'committed row');
    echo "transactions: ok\n";

    // COPY (pgsqlCopyFromArray / pgsqlCopyToArray).
    $rows = [];
    for ($i = 1000; $i < 1500; $i++) $rows[] = "$i\tcopied $i";
    check($c->pgsqlCopyFromArray('php_items', $rows, "\t", "\\\\N", 'id, v'), 'COPY FROM');
    $out = $c->pgsqlCopyToArray('php_items', "\t", "\\\\N", 'id, v');
    check(count($out) == 502, 'COPY TO rows: ' . count($out));
    expect_error('23505', fn() => $c->pgsqlCopyFromArray('php_items', ["1000\tdup"], "\t", "\\\\N", 'id, v'));
    check(one($c, 'SELECT count(*) FROM php_items WHERE id >= 1000') == 500, 'rows after failed COPY');
    echo "copy: ok\n";
    $c = null;

    // 30 connections, the same pdo_stmt_N names for other texts, reused across 20 transactions.
    fork_all(30, function ($k) {
        $cc = connect();
        $texts = ['SELECT ?::int * 2', "SELECT ?::text || '-$k'", 'SELECT ?::bigint - 1'];
        $st = [];
        for ($q = 0; $q < 3; $q++) { $i = ($q + $k) % 3; $st[$i] = $cc->prepare($texts[$i]); }
        for ($round = 0; $round < 20; $round++) {
            $cc->beginTransaction();
            for ($q = 0; $q < 3; $q++) {
                $i = ($q + $round) % 3;
                $st[$i]->execute([$round]);
                $got = (string)$st[$i]->fetchColumn();
                $want = [(string)($round * 2), "$round-$k", (string)($round - 1)][$i];
                check($got === $want, "conn $k round $round: $got != $want");
            }
            $cc->commit();
        }
        return 0;
    });
    echo "named statements: 30 connections x 20 transactions: ok\n";

    $c = connect();
    $c->exec('DROP TABLE IF EXISTS php_load; CREATE TABLE php_load (w int, i int, v text, PRIMARY KEY (w, i))');
    $c = null;
    $counts = fork_all($workers, function ($w) use ($ops) {
        $cc = connect();
        $ins = $cc->prepare('INSERT INTO php_load VALUES (?, ?, ?)');
        $get = $cc->prepare('SELECT v FROM php_load WHERE w = ? AND i = ?');
        $on = 0;
        for ($i = 0; $i < $ops; $i++) {
            switch ($i % 4) {
                case 0:
                    $ins->execute([$w, $i, "$w/$i"]);
                    $get->execute([$w, $i]);
                    check($get->fetchColumn() === "$w/$i", "stale read $w/$i");
                    break;
                case 1:
                    if ($cc->query('SELECT pg_is_in_recovery()')->fetchColumn() === true) $on++;
                    break;
                case 2:
                    $cc->beginTransaction();
                    $cc->prepare("UPDATE php_load SET v = v || '+' WHERE w = ? AND i = ?")->execute([$w, $i - 2]);
                    $get->execute([$w, $i - 2]);
                    check(str_ends_with($get->fetchColumn(), '+'), "update $w/$i");
                    $cc->commit();
                    break;
                default:
                    check(one($cc, 'SELECT count(*) FROM generate_series(1, ?::int)', [$i]) == $i, "count $i");
            }
        }
        return $on;
    });
    $c = connect();
    $rows = (int)$c->query('SELECT count(*) FROM php_load')->fetchColumn();
    $expect = intdiv($ops + 3, 4) * $workers;
    check($rows === $expect, "rows $rows, expected $expect");
    $reads = intdiv($ops + 2, 4) * $workers;
    printf("concurrency: %d workers x %d operations, 0 errors, %d of %d autocommit reads on replicas\n",
        $workers, $ops, array_sum(array_map('intval', $counts)), $reads);
    printf("pdo_pgsql OK: %d workers x %d operations in %.1f s\n", $workers, $ops, microtime(true) - $t0);
} catch (Throwable $e) {
    fwrite(STDERR, "pdo_pgsql FAILED: $e\n");
    exit(1);
}
