// PostgreSQL JDBC (pgjdbc, Debian's libpostgresql-jdbc-java) through pgtier in transaction
// mode; run by tests/tests/drivers_more.rs with Java's single-file source launcher:
//
//   java -cp /usr/share/java/postgresql.jar tests/java/JdbcDriver.java HOST PORT USER DB PASSWORD [WORKERS] [OPS]
//
// pgjdbc runs a PreparedStatement unnamed until it has executed prepareThreshold times (5 by
// default), then as a server-side statement named S_1, S_2, ... per connection; with
// prepareThreshold=1 from the first execution. Every check runs with both settings. With
// autocommit off it sends BEGIN in the same pipeline as the first statement, and a fetch size
// in a transaction reads through a named portal, a batch is one pipeline of Bind/Execute with
// one Sync. Prints "jdbc OK ..." and exits 0 when every check passed.

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcDriver {
    static String host, port, user, db, password;

    static Connection connect(int prepareThreshold) throws SQLException {
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + db
                + "?sslmode=disable&connectTimeout=30"
                + (prepareThreshold > 0 ? "&prepareThreshold=" + prepareThreshold : "");
        return DriverManager.getConnection(url, user, password);
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    interface SqlRun { void run() throws Exception; }

    static String expectError(SqlRun r) throws Exception {
        try {
            r.run();
        } catch (SQLException e) {
            return e.getSQLState();
        }
        throw new AssertionError("expected an error");
    }

    static boolean bool1(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getBoolean(1);
        }
    }

    public static void main(String[] a) throws Exception {
        if (a.length < 5) {
            System.err.println("usage: JdbcDriver HOST PORT USER DB PASSWORD [WORKERS] [OPS]");
            System.exit(2);
        }
        host = a[0]; port = a[1]; user = a[2]; db = a[3]; password = a[4];
        int workers = a.length > 5 ? Integer.parseInt(a[5]) : 20;
        int ops = a.length > 6 ? Integer.parseInt(a[6]) : 200;
        long t0 = System.nanoTime();
        try {
            try (Connection c = connect(0)) {
                try (Statement s = c.createStatement()) {
                    s.execute("DROP TABLE IF EXISTS jdbc_items; CREATE TABLE jdbc_items (id int PRIMARY KEY, v text NOT NULL)");
                }
                System.out.println("driver " + c.getMetaData().getDriverVersion());
            }
            // Every check with prepareThreshold default (5) and 1.
            for (int threshold : new int[] {0, 1}) {
                String tag = threshold == 0 ? "prepareThreshold=default" : "prepareThreshold=1";
                int base = threshold == 0 ? 0 : 100000;
                try (Connection c = connect(threshold)) {
                    basics(c, base);
                    routing(c, base);
                    transactions(c, base);
                    batch(c, base);
                    copy(c, base);
                    cancel(c);
                }
                statementReuse(threshold);
                System.out.println(tag + ": ok");
            }
            concurrency(workers, ops);
        } catch (Throwable e) {
            System.err.println("jdbc FAILED: " + e);
            e.printStackTrace();
            System.exit(1);
        }
        System.out.printf("jdbc OK: %d workers x %d operations in %.1f s%n", workers, ops,
                (System.nanoTime() - t0) / 1e9);
        System.exit(0);
    }

    static void basics(Connection c, int base) throws Exception {
        try (Statement s = c.createStatement()) {
            // Several statements in one simple query.
            check(s.execute("SELECT 1; SELECT 2"), "simple query");
            try (ResultSet rs = s.executeQuery("SELECT 40 + 2")) {
                rs.next();
                check(rs.getInt(1) == 42, "simple query result");
            }
        }
        // The same PreparedStatement executed past the threshold (server-side from then on).
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, ?::text")) {
            for (int i = 0; i < 12; i++) {
                ps.setInt(1, i);
                ps.setString(2, "p" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == i + 1 && rs.getString(2).equals("p" + i), "parameterized " + i);
                }
            }
        }
    }

    static void routing(Connection c, int base) throws Exception {
        try (PreparedStatement ps = c.prepareStatement(
                "INSERT INTO jdbc_items VALUES (?, ?) RETURNING pg_is_in_recovery()")) {
            ps.setInt(1, base + 1);
            ps.setString(2, "first");
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                check(!rs.getBoolean(1), "an INSERT ran on a replica");
            }
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT v FROM jdbc_items WHERE id = ?")) {
            ps.setInt(1, base + 1);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next() && rs.getString(1).equals("first"), "read-your-writes");
            }
        }
        // A connection that has not written reads from a replica (once it has replayed).
        try (Connection r = connect(0)) {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (!bool1(r, "SELECT pg_is_in_recovery()")) {
                check(System.nanoTime() < deadline, "no autocommit read went to a replica in 20 s");
                Thread.sleep(50);
            }
        }
    }

    static void transactions(Connection c, int base) throws Exception {
        c.setAutoCommit(false);
        try (PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_items VALUES (?, ?)");
             PreparedStatement cnt = c.prepareStatement("SELECT count(*) FROM jdbc_items WHERE id = ?")) {
            // Rolled back.
            ins.setInt(1, base + 2);
            ins.setString(2, "rolled back");
            ins.executeUpdate();
            check(bool1(c, "SELECT NOT pg_is_in_recovery()"), "a transaction ran on a replica");
            c.rollback();
            cnt.setInt(1, base + 2);
            try (ResultSet rs = cnt.executeQuery()) {
                rs.next();
                check(rs.getInt(1) == 0, "rolled back row is there");
            }
            c.commit();
            // An error inside the transaction: 22012, then 25P02, rollback, recovered.
            ins.setInt(1, base + 3);
            ins.setString(2, "lost");
            ins.executeUpdate();
            String st = expectError(() -> {
                try (PreparedStatement d = c.prepareStatement("SELECT 10 / ?")) {
                    d.setInt(1, 0);
                    d.executeQuery().close();
                }
            });
            check("22012".equals(st), "expected 22012, got " + st);
            st = expectError(() -> bool1(c, "SELECT true"));
            check("25P02".equals(st), "expected 25P02, got " + st);
            c.rollback();
            cnt.setInt(1, base + 3);
            try (ResultSet rs = cnt.executeQuery()) {
                rs.next();
                check(rs.getInt(1) == 0, "the failed transaction's row is there");
            }
            // Committed, then a fetch size in a transaction: a named portal read in pieces.
            ins.setInt(1, base + 4);
            ins.setString(2, "committed");
            ins.executeUpdate();
            c.commit();
            try (PreparedStatement ps = c.prepareStatement("SELECT g FROM generate_series(1, ?) g")) {
                ps.setFetchSize(7);
                ps.setInt(1, 100);
                int n = 0;
                long sum = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        n++;
                        sum += rs.getInt(1);
                    }
                }
                check(n == 100 && sum == 5050, "fetch size: " + n + " rows, sum " + sum);
            }
            c.commit();
        } finally {
            c.setAutoCommit(true);
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT v FROM jdbc_items WHERE id = ?")) {
            ps.setInt(1, base + 4);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next() && rs.getString(1).equals("committed"), "committed row");
            }
        }
    }

    static void batch(Connection c, int base) throws Exception {
        // Autocommit off: the batch and its commit.
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO jdbc_items VALUES (?, ?)")) {
            for (int i = 0; i < 300; i++) {
                ps.setInt(1, base + 10000 + i);
                ps.setString(2, "batch " + i);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            check(counts.length == 300, "batch counts " + counts.length);
            c.commit();
            // A batch failing half-way: BatchUpdateException with 23505, rolled back.
            for (int i = 299; i < 310; i++) {
                ps.setInt(1, base + 10000 + (i == 305 ? 0 : i + 1));
                ps.setString(2, "dup");
                ps.addBatch();
            }
            String st = expectError(ps::executeBatch);
            check("23505".equals(st), "batch with a duplicate: " + st);
            c.rollback();
        } finally {
            c.setAutoCommit(true);
        }
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT count(*) FROM jdbc_items WHERE id >= ? AND id < ?")) {
            ps.setInt(1, base + 10000);
            ps.setInt(2, base + 20000);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                check(rs.getInt(1) == 300, "batch rows: " + rs.getInt(1));
            }
        }
    }

    static void copy(Connection c, int base) throws Exception {
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 500; i++) sb.append(base + 20000 + i).append(",copied ").append(i).append('\n');
        long n = cm.copyIn("COPY jdbc_items (id, v) FROM STDIN WITH (FORMAT csv)", new StringReader(sb.toString()));
        check(n == 500, "COPY IN rows " + n);
        StringWriter w = new StringWriter();
        long out = cm.copyOut("COPY (SELECT id, v FROM jdbc_items WHERE id >= " + (base + 20000)
                + " AND id < " + (base + 30000) + " ORDER BY id) TO STDOUT WITH (FORMAT csv)", w);
        check(out == 500 && w.toString().startsWith((base + 20000) + ",copied 0\n"), "COPY OUT " + out);
        String st = expectError(() -> cm.copyIn("COPY jdbc_items (id, v) FROM STDIN WITH (FORMAT csv)",
                new StringReader((base + 20000) + ",dup\n")));
        check("23505".equals(st), "failing COPY: " + st);
        check(!bool1(c, "SELECT false"), "connection after a failed COPY");
    }

    static void cancel(Connection c) throws Exception {
        try (Statement s = c.createStatement()) {
            ExecutorService ex = Executors.newSingleThreadExecutor();
            try {
                long t0 = System.nanoTime();
                Future<String> f = ex.submit(() -> {
                    try {
                        s.execute("SELECT pg_sleep(30)");
                        return "not cancelled";
                    } catch (SQLException e) {
                        return e.getSQLState();
                    }
                });
                // Cancel once the query is running (Statement.cancel sends a CancelRequest).
                String st = null;
                while (st == null) {
                    Thread.sleep(100);
                    s.cancel();
                    try {
                        st = f.get(200, TimeUnit.MILLISECONDS);
                    } catch (java.util.concurrent.TimeoutException e) {
                        check(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(20), "cancel did not arrive in 20 s");
                    }
                }
                check("57014".equals(st), "cancel: " + st);
                check(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(20), "cancel took too long");
            } finally {
                ex.shutdownNow();
            }
            // setQueryTimeout is a cancel too.
            s.setQueryTimeout(1);
            String st = expectError(() -> s.execute("SELECT pg_sleep(30)"));
            check("57014".equals(st), "query timeout: " + st);
            s.setQueryTimeout(0);
            check(bool1(c, "SELECT true"), "connection after cancel");
        }
    }

    // 30 connections, each with its own texts under pgjdbc's S_N names, reused across 20
    // transactions each (autocommit off).
    static void statementReuse(int threshold) throws Exception {
        int conns = 30, rounds = 20;
        ExecutorService ex = Executors.newFixedThreadPool(conns);
        try {
            List<Future<?>> fs = new ArrayList<>();
            for (int k = 0; k < conns; k++) {
                final int kk = k;
                fs.add(ex.submit(() -> {
                    try (Connection c = connect(threshold)) {
                        c.setAutoCommit(false);
                        // Prepared in a different order on each connection: S_1 names other texts elsewhere.
                        String[] texts = {"SELECT ?::int * 2", "SELECT ?::text || '-" + kk + "'", "SELECT ?::bigint - 1"};
                        PreparedStatement[] ps = new PreparedStatement[3];
                        for (int q = 0; q < 3; q++) ps[(q + kk) % 3] = c.prepareStatement(texts[(q + kk) % 3]);
                        for (int r = 0; r < rounds; r++) {
                            for (int q = 0; q < 3; q++) {
                                int i = (q + kk + r) % 3;
                                if (i == 1) ps[i].setString(1, "r" + r); else ps[i].setInt(1, r);
                                try (ResultSet rs = ps[i].executeQuery()) {
                                    rs.next();
                                    String got = rs.getString(1);
                                    String want = i == 0 ? "" + (r * 2) : i == 1 ? "r" + r + "-" + kk : "" + (r - 1);
                                    check(got.equals(want), "conn " + kk + " round " + r + ": " + got + " != " + want);
                                }
                            }
                            c.commit();
                        }
                        for (PreparedStatement p : ps) p.close();
                    }
                    return null;
                }));
            }
            for (Future<?> f : fs) f.get(120, TimeUnit.SECONDS);
        } finally {
            ex.shutdownNow();
        }
    }

    // WORKERS threads, one connection each (even ones prepareThreshold default, odd ones 1),
    // OPS operations each: writes read back, autocommit reads, transactions; 0 errors.
    static void concurrency(int workers, int ops) throws Exception {
        try (Connection c = connect(0); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS jdbc_load; CREATE TABLE jdbc_load (w int, i int, v text, PRIMARY KEY (w, i))");
        }
        ExecutorService ex = Executors.newFixedThreadPool(workers);
        int replicaReads = 0;
        try {
            List<Future<Integer>> fs = new ArrayList<>();
            for (int w = 0; w < workers; w++) {
                final int ww = w;
                fs.add(ex.submit(() -> {
                    int onReplica = 0;
                    try (Connection c = connect(ww % 2 == 0 ? 0 : 1);
                         PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_load VALUES (?, ?, ?)");
                         PreparedStatement get = c.prepareStatement("SELECT v FROM jdbc_load WHERE w = ? AND i = ?");
                         PreparedStatement upd = c.prepareStatement("UPDATE jdbc_load SET v = v || '+' WHERE w = ? AND i = ?");
                         PreparedStatement rec = c.prepareStatement("SELECT pg_is_in_recovery()")) {
                        for (int i = 0; i < ops; i++) {
                            switch (i % 4) {
                                case 0:
                                    ins.setInt(1, ww); ins.setInt(2, i); ins.setString(3, ww + "/" + i);
                                    ins.executeUpdate();
                                    get.setInt(1, ww); get.setInt(2, i);
                                    try (ResultSet rs = get.executeQuery()) {
                                        check(rs.next() && rs.getString(1).equals(ww + "/" + i), "stale read " + ww + "/" + i);
                                    }
                                    break;
                                case 1:
                                    try (ResultSet rs = rec.executeQuery()) {
                                        rs.next();
                                        if (rs.getBoolean(1)) onReplica++;
                                    }
                                    break;
                                case 2:
                                    c.setAutoCommit(false);
                                    upd.setInt(1, ww); upd.setInt(2, i - 2);
                                    check(upd.executeUpdate() == 1, "update " + ww + "/" + i);
                                    get.setInt(1, ww); get.setInt(2, i - 2);
                                    try (ResultSet rs = get.executeQuery()) {
                                        check(rs.next() && rs.getString(1).endsWith("+"), "update seen " + ww + "/" + i);
                                    }
                                    c.commit();
                                    c.setAutoCommit(true);
                                    break;
                                default:
                                    try (PreparedStatement p = c.prepareStatement("SELECT count(*) FROM generate_series(1, ?)")) {
                                        p.setInt(1, i);
                                        try (ResultSet rs = p.executeQuery()) {
                                            rs.next();
                                            check(rs.getInt(1) == i, "count " + i);
                                        }
                                    }
                            }
                        }
                    }
                    return onReplica;
                }));
            }
            for (Future<Integer> f : fs) replicaReads += f.get(170, TimeUnit.SECONDS);
        } finally {
            ex.shutdownNow();
        }
        int expect = 0;
        for (int i = 0; i < ops; i++) if (i % 4 == 0) expect += workers;
        try (Connection c = connect(0)) {
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM jdbc_load")) {
                rs.next();
                check(rs.getInt(1) == expect, "rows " + rs.getInt(1) + ", expected " + expect);
            }
        }
        int reads = 0;
        for (int i = 0; i < ops; i++) if (i % 4 == 1) reads += workers;
        System.out.println("concurrency: " + workers + " workers x " + ops + " operations, 0 errors, "
                + replicaReads + " of " + reads + " autocommit reads on replicas");
    }
}
