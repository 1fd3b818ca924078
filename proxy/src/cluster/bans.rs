//! Administrator bans (admin BAN / UNBAN): a banned node stays out of rotation whatever its
//! monitor reports, until it is unbanned and passes a fresh check.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::topology::{Health, Topology};
use crate::config::NodeAddr;

impl Topology {
    /// The node whose address is `addr` (`"host:port"`, IPv6 as `"[::1]:5432"`).
    pub fn node_index(&self, addr: &str) -> Option<usize> {
        let addr = NodeAddr::parse(addr)?;
        self.settings
            .nodes
            .iter()
            .position(|n| n.addr.port == addr.port && n.addr.host.eq_ignore_ascii_case(&addr.host))
    }

    /// Bans `node` on an administrator's request: out of rotation (state `Banned`) until
    /// [`Topology::admin_unban`], whatever its monitor reports. Banning the primary stops
    /// writes (`View::primary` is None meanwhile). Out-of-range nodes are ignored.
    pub fn admin_ban(&self, node: usize) {
        if node >= self.node_count() {
            return;
        }
        let mut st = self.lock();
        if !st.nodes[node].admin_banned {
            warn!(node = %self.settings.nodes[node].addr, "banned by an administrator: out of rotation until UNBAN");
            st.nodes[node].admin_banned = true;
        }
        self.refresh(&mut st);
    }

    /// Lifts an administrator's ban: the node is re-admitted at its next successful check (at
    /// once for an unmonitored topology, which has no checks). No-op if it is not banned so.
    pub fn admin_unban(&self, node: usize) {
        if node >= self.node_count() {
            return;
        }
        {
            let mut st = self.lock();
            let rt = &mut st.nodes[node];
            if !rt.admin_banned {
                return;
            }
            info!(node = %self.settings.nodes[node].addr, "unbanned by an administrator: back at its next successful check");
            rt.admin_banned = false;
            // What the monitor saw during the ban is not a fresh check: wait for the next one
            // (a Down or never-checked node stays as it is).
            if self.monitored && rt.health == Health::Up {
                rt.health = Health::Banned;
                rt.last_error = Some(
                    "unbanned by an administrator: waiting for the next successful check".into(),
                );
                rt.seen = None;
                rt.lag.reset();
                rt.last_lag = None;
            }
            self.refresh(&mut st);
        }
        self.wake[node].notify_one();
    }

    /// How many times a node of this topology entered `Banned` (automatic or administrator).
    pub fn bans_total(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }
}
