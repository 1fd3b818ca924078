//! The server-connection budget of a config, per node, for `pgtier check --instances N`: how
//! many connections one pgtier process may open to each node at full load (every pool full,
//! within `max_db_connections` / `max_user_connections`), plus its helper connections, so the
//! DBA can compare N processes' total with the node's `max_connections`.

use std::collections::BTreeMap;

use super::settings::{NodeAddr, Settings};
use super::topology::ConfiguredRole;

/// One (database, user) pool on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLine {
    /// Client-facing database name.
    pub database: String,
    /// Client-facing user name.
    pub user: String,
    /// Its `pool_size`.
    pub size: u32,
    /// Its `min_pool_size` (kept open once the pool exists).
    pub min: u32,
}

/// What one pgtier process may open to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBudget {
    /// The node (as configured; the same address under several databases counts once).
    pub addr: NodeAddr,
    /// Every pool pgtier may create for it.
    pub pools: Vec<PoolLine>,
    /// Sum of the pool sizes.
    pub pool_sum: u32,
    /// Most pool connections at once, after `max_db_connections` and `max_user_connections`.
    pub pool_max: u32,
    /// Connections kept open while idle (`min_pool_size` of every pool).
    pub idle_floor: u32,
    /// Lag monitors: one per database that lists the node.
    pub monitors: u32,
    /// Connections to a node that may be the primary: one `pg_proc` read per database (brief,
    /// at start and reload) and one `auth_query` connection per database that sets `auth_user`.
    pub primary_helpers: u32,
}

impl NodeBudget {
    /// Most connections one process opens to the node at full load.
    pub fn per_instance(&self) -> u32 {
        self.pool_max + self.monitors + self.primary_helpers
    }
}

/// The budget of every node of `settings`, by address. Users in `admin_users` are taken to use
/// the admin console only (they get no pools).
pub fn node_budgets(settings: &Settings) -> Vec<NodeBudget> {
    let mut users: Vec<_> = settings
        .users
        .values()
        .filter(|u| !settings.raw.admin_users.contains(&u.name))
        .collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut dbs: Vec<_> = settings.databases.values().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));

    #[derive(Default)]
    struct Acc {
        pools: Vec<PoolLine>,
        // Per database: (pool sizes summed, max_db_connections).
        per_db: BTreeMap<String, (u32, Option<u32>)>,
        // Per user: (pool sizes summed, max_user_connections).
        per_user: BTreeMap<String, (u32, Option<u32>)>,
        monitors: u32,
        primary_helpers: u32,
    }
    let mut acc: BTreeMap<String, (NodeAddr, Acc)> = BTreeMap::new();
    for db in &dbs {
        for node in db.nodes() {
            let (_, a) = acc
                .entry(node.addr.to_string())
                .or_insert_with(|| (node.addr.clone(), Acc::default()));
            a.monitors += 1;
            if node.role != ConfiguredRole::Replica {
                a.primary_helpers += 1 + u32::from(db.auth_query.is_some());
            }
            for user in &users {
                let pool = db.pool_for(user);
                a.pools.push(PoolLine {
                    database: db.name.clone(),
                    user: user.name.clone(),
                    size: pool.size,
                    min: pool.min_size,
                });
                let d = a.per_db.entry(db.name.clone()).or_default();
                d.0 += pool.size;
                d.1 = pool.max_db_connections;
                let u = a.per_user.entry(user.name.clone()).or_default();
                u.0 += pool.size;
                u.1 = pool.max_user_connections;
            }
        }
    }
    let capped = |m: &BTreeMap<String, (u32, Option<u32>)>| -> u32 {
        m.values()
            .map(|&(sum, cap)| cap.map_or(sum, |c| sum.min(c)))
            .sum()
    };
    acc.into_values()
        .map(|(addr, a)| {
            let pool_sum = a.pools.iter().map(|p| p.size).sum();
            NodeBudget {
                addr,
                pool_sum,
                // Both caps bound the same connections: the smaller total holds.
                pool_max: capped(&a.per_db).min(capped(&a.per_user)),
                idle_floor: a.pools.iter().map(|p| p.min).sum(),
                pools: a.pools,
                monitors: a.monitors,
                primary_helpers: a.primary_helpers,
            }
        })
        .collect()
}

/// Share of a node's usable connections above which `pgtier check` warns.
pub const WARN_SHARE: f64 = 0.8;

/// A node's own limit, read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimit {
    /// `max_connections`.
    pub max_connections: u32,
    /// `superuser_reserved_connections` + `reserved_connections` (Postgres 16+).
    pub reserved: u32,
}

impl ServerLimit {
    /// Connections ordinary roles (pgtier's) may open.
    pub fn usable(&self) -> u32 {
        self.max_connections.saturating_sub(self.reserved)
    }
}

/// How `instances` processes' total compares with a node's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At most [`WARN_SHARE`] of the usable connections.
    Fits,
    /// Above [`WARN_SHARE`], within the limit.
    Tight,
    /// More than the node allows: at full load it refuses connections (53300).
    Over,
}

/// The verdict for `total` connections against `limit`.
pub fn verdict(total: u32, limit: ServerLimit) -> Verdict {
    let usable = limit.usable();
    if total > usable {
        Verdict::Over
    } else if f64::from(total) > WARN_SHARE * f64::from(usable) {
        Verdict::Tight
    } else {
        Verdict::Fits
    }
}

/// Pools listed per node before "and N more".
const LISTED_POOLS: usize = 10;

/// The report `pgtier check --instances N` prints, and whether every node fits (false: some
/// node would refuse connections at full load). `limits` holds what `--connect` read, by
/// address (a node missing from it was not asked).
pub fn render(
    budgets: &[NodeBudget],
    instances: u32,
    limits: &BTreeMap<String, Result<ServerLimit, String>>,
) -> (String, bool) {
    use std::fmt::Write as _;
    let mut out = format!(
        "connection budget of {instances} pgtier instance(s) (server connections per node at full load):\n"
    );
    let mut warnings = Vec::new();
    let mut fits = true;
    for b in budgets {
        let addr = b.addr.to_string();
        let total = b.per_instance().saturating_mul(instances);
        let _ = write!(
            out,
            "  {addr}: {instances} x {} = {total}",
            b.per_instance()
        );
        match limits.get(&addr) {
            None => out.push_str(" (max_connections not read: add --connect)\n"),
            Some(Err(why)) => {
                let _ = writeln!(out, " (max_connections unknown: {why})");
            }
            Some(Ok(limit)) => {
                let usable = limit.usable();
                let share = if usable == 0 {
                    f64::INFINITY
                } else {
                    f64::from(total) / f64::from(usable) * 100.0
                };
                let _ = writeln!(
                    out,
                    " of {usable} usable (max_connections {}, {} reserved): {share:.0}%",
                    limit.max_connections, limit.reserved
                );
                match verdict(total, *limit) {
                    Verdict::Fits => {}
                    Verdict::Tight => warnings.push(format!(
                        "WARNING {addr}: {instances} instance(s) may use {share:.0}% of its usable connections (above {:.0}%)",
                        WARN_SHARE * 100.0
                    )),
                    Verdict::Over => {
                        fits = false;
                        warnings.push(format!(
                            "ERROR {addr}: {instances} instance(s) may open {total} connections, it allows {usable}: at full load it refuses logins (53300); lower pool_size, set max_db_connections / max_user_connections, or raise max_connections"
                        ));
                    }
                }
            }
        }
        let capped = if b.pool_max < b.pool_sum {
            format!(
                " (sizes sum to {}, capped by max_db_connections / max_user_connections)",
                b.pool_sum
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "    per instance: pools {}{capped}, monitors {}, primary helpers {}; idle floor (min_pool_size) {}",
            b.pool_max, b.monitors, b.primary_helpers, b.idle_floor
        );
        let mut listed: Vec<String> = b
            .pools
            .iter()
            .take(LISTED_POOLS)
            .map(|p| format!("{}/{} {}", p.database, p.user, p.size))
            .collect();
        if b.pools.len() > LISTED_POOLS {
            listed.push(format!("and {} more", b.pools.len() - LISTED_POOLS));
        }
        if !listed.is_empty() {
            let _ = writeln!(
                out,
                "    pools (database/user pool_size): {}",
                listed.join(", ")
            );
        }
    }
    for w in warnings {
        let _ = writeln!(out, "{w}");
    }
    (out, fits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn budgets_sum_pools_per_node_within_the_caps() {
        let s = parse_str(
            r#"
pool_size = 10
min_pool_size = 2
admin_users = ["admin"]
[users.admin]
password = "a"
[users.a]
password = "a"
[users.b]
password = "b"
pool_size = 4
[databases.one]
primary = "10.0.0.1:5432"
replicas = ["10.0.0.2:5432"]
[databases.two]
primary = "10.0.0.1:5432"
max_db_connections = 5
"#,
        )
        .unwrap();
        let b = node_budgets(&s);
        assert_eq!(b.len(), 2);
        let p = b.iter().find(|n| n.addr.host == "10.0.0.1").unwrap();
        // one: a 10 + b 4; two: a 10 + b 4, capped at 5.
        assert_eq!((p.pool_sum, p.pool_max), (28, 19));
        assert_eq!((p.idle_floor, p.monitors, p.primary_helpers), (8, 2, 2));
        assert_eq!(p.per_instance(), 23);
        let r = b.iter().find(|n| n.addr.host == "10.0.0.2").unwrap();
        assert_eq!((r.pool_max, r.monitors, r.primary_helpers), (14, 1, 0));
        assert!(r.pools.iter().all(|l| l.user != "admin"));

        let limit = ServerLimit {
            max_connections: 100,
            reserved: 3,
        };
        assert_eq!(verdict(77, limit), Verdict::Fits);
        assert_eq!(verdict(78, limit), Verdict::Tight);
        assert_eq!(verdict(97, limit), Verdict::Tight);
        assert_eq!(verdict(98, limit), Verdict::Over);
    }

    #[test]
    fn the_report_warns_above_80_percent_and_fails_over_the_limit() {
        let s = parse_str(
            "pool_size = 20\n[users.a]\npassword = \"a\"\n[databases.d]\nprimary = \"h:5432\"\n",
        )
        .unwrap();
        let b = node_budgets(&s);
        // 20 pool connections + 1 monitor + 1 catalog read = 22 per instance.
        assert_eq!(b[0].per_instance(), 22);
        let limit = |max| {
            BTreeMap::from([(
                "h:5432".to_string(),
                Ok(ServerLimit {
                    max_connections: max,
                    reserved: 3,
                }),
            )])
        };
        let (text, ok) = render(&b, 4, &limit(203));
        assert!(ok && !text.contains("WARNING"), "{text}");
        assert!(text.contains("h:5432: 4 x 22 = 88 of 200 usable"), "{text}");
        let (text, ok) = render(&b, 4, &limit(103));
        assert!(
            ok && text.contains("WARNING h:5432: 4 instance(s) may use 88%"),
            "{text}"
        );
        let (text, ok) = render(&b, 5, &limit(103));
        assert!(!ok && text.contains("ERROR h:5432"), "{text}");
        let (text, ok) = render(&b, 5, &BTreeMap::new());
        assert!(ok && text.contains("add --connect"), "{text}");
    }
}
