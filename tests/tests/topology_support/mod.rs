//! What the topology tests share: a kit cluster with a tokio runtime, topology settings for
//! it, and waits on the published view.
// Shared by two test binaries, each using part of it.
#![allow(dead_code, unused_imports)]

pub use std::sync::atomic::{AtomicBool, Ordering};
pub use std::sync::{Arc, Mutex};
pub use std::time::{Duration, Instant};

pub use pgtier::cluster::{
    ClusterSettings, ConfiguredRole, Lsn, MonitorLogin, NodeConfig, NodeState, Pick, Role,
    Topology, View,
};
pub use pgtier::config::NodeAddr;
pub use pgtier_kit::{Cluster, Node};

pub const INTERVAL: Duration = Duration::from_millis(100);

pub struct Fixture {
    pub cluster: Cluster,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new(replicas: usize) -> Fixture {
        let cluster = Cluster::start(replicas).unwrap();
        cluster.create_trust_role("pgtier_trust").unwrap();
        cluster
            .primary()
            .psql("CREATE TABLE lag_t (id bigserial, pad text)")
            .unwrap();
        cluster.wait_replicas_caught_up().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Fixture { cluster, rt }
    }

    pub fn settings(
        &self,
        roles: &[ConfiguredRole],
        max_lag: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> ClusterSettings {
        let nodes = self.nodes();
        assert_eq!(roles.len(), nodes.len());
        ClusterSettings {
            nodes: nodes
                .iter()
                .zip(roles)
                .map(|(n, &role)| NodeConfig {
                    addr: NodeAddr::parse(&n.addr()).unwrap(),
                    role,
                    weight: 1,
                    zone: None,
                })
                .collect(),
            lag_check_interval: INTERVAL,
            max_replica_lag: max_lag,
            max_replica_lag_bytes: max_bytes,
            login: MonitorLogin {
                user: "pgtier_trust".into(),
                password: None,
                dbname: "postgres".into(),
            },
            connect_timeout: Duration::from_secs(2),
            zone: None,
            zone_mode: Default::default(),
        }
    }

    /// Primary first, then replicas: node ids of the topology.
    pub fn nodes(&self) -> Vec<&Node> {
        std::iter::once(self.cluster.primary())
            .chain(self.cluster.replicas())
            .collect()
    }

    pub fn start(&self, settings: ClusterSettings) -> Arc<Topology> {
        let _g = self.rt.enter();
        Topology::start(settings, pgtier::tls::ServerTls::disabled())
    }

    /// Waits up to `limit` for `pred`; returns the view and how long it took.
    pub fn wait(
        &self,
        t: &Topology,
        limit: Duration,
        what: &str,
        pred: impl FnMut(&View) -> bool,
    ) -> (Arc<View>, Duration) {
        let t0 = Instant::now();
        match self.rt.block_on(t.wait_until(limit, pred)) {
            Some(v) => (v, t0.elapsed()),
            None => panic!(
                "timed out after {limit:?} waiting for {what}; view: {:#?}\n{}",
                t.view(),
                self.cluster.log_tails()
            ),
        }
    }

    /// Returns once the monitors have recorded `n` more attempts on every node of `nodes`
    /// (from now): "several checks later", counted rather than slept. Panics after 10 s.
    pub fn after_checks(&self, t: &Topology, nodes: &[usize], n: u64) {
        let from: Vec<u64> = nodes.iter().map(|&i| t.attempts(i)).collect();
        let t0 = Instant::now();
        while nodes
            .iter()
            .zip(&from)
            .any(|(&i, &f)| t.attempts(i) < f + n)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{n} more checks of nodes {nodes:?} not within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes ~`kb` KiB of WAL on the primary (committed); returns its WAL insert position
    /// afterwards.
    pub fn write(&self, kb: usize) -> Lsn {
        let rows = kb * 1024 / 200;
        let p = self.cluster.primary();
        p.psql(&format!(
            "INSERT INTO lag_t (pad) SELECT repeat('x', 100) FROM generate_series(1, {rows})"
        ))
        .unwrap();
        p.psql("SELECT pg_current_wal_insert_lsn()")
            .unwrap()
            .parse()
            .unwrap()
    }
}

pub fn states(v: &View) -> Vec<NodeState> {
    v.nodes.iter().map(|n| n.state).collect()
}

pub fn all_healthy(v: &View) -> bool {
    v.nodes.iter().all(|n| n.state == NodeState::Healthy)
}

pub fn pause(node: &Node) {
    node.pause_replay().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.psql("SELECT pg_get_wal_replay_pause_state()").unwrap() != "paused" {
        assert!(
            Instant::now() < deadline,
            "replay of {} not paused",
            node.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub use ConfiguredRole::{Auto, Primary, Replica};
