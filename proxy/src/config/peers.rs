//! Cancel peering (PgBouncer's `peer_id` and `[peers]`): which pgtier process this is, where
//! the others are, and the extra address peers forward cancel requests to.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::load::Validator;
use super::schema::Config;
use super::settings::NodeAddr;

/// Largest `peer_id` (it fills 14 bits of the cancel keys pgtier issues).
pub const MAX_PEER_ID: u16 = 16383;

/// This process's place among its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peering {
    /// This process's id (None: peering off, cancel keys are fully random).
    pub id: Option<u16>,
    /// Every peer's address by id (this process's own entry may be listed too).
    pub peers: HashMap<u16, NodeAddr>,
    /// An extra address this process listens on, reachable by the peers even when several
    /// processes share `listen` (so_reuseport).
    pub listen: Option<SocketAddr>,
}

impl Validator<'_> {
    /// Checks `peer_id`, `peer_listen` and `[peers]`.
    pub(super) fn peering(&mut self, raw: &Config) -> Peering {
        let id = match raw.peer_id {
            0 => None,
            n if n <= u32::from(MAX_PEER_ID) => Some(n as u16),
            _ => {
                self.fail(
                    &["peer_id"],
                    format!("must be 0 (peering off) to {MAX_PEER_ID}"),
                );
                None
            }
        };
        let listen = match raw.peer_listen.as_str() {
            "" => None,
            addr => addr.parse::<SocketAddr>().map(Some).unwrap_or_else(|_| {
                self.fail(
                    &["peer_listen"],
                    "expected an address like \"127.0.0.1:6441\" (or \"\")",
                );
                None
            }),
        };
        let mut peers = HashMap::new();
        for (key, addr) in &raw.peers {
            let Some(n) = key
                .parse::<u16>()
                .ok()
                .filter(|n| (1..=MAX_PEER_ID).contains(n))
            else {
                self.fail(
                    &["peers", key],
                    format!("peer ids are numbers from 1 to {MAX_PEER_ID}"),
                );
                continue;
            };
            match NodeAddr::parse(addr) {
                Some(a) => {
                    peers.insert(n, a);
                }
                None => self.fail(&["peers", key], "expected \"host:port\""),
            }
        }
        if id.is_none() && !raw.peers.is_empty() && raw.peer_id == 0 {
            self.fail(
                &["peers"],
                "[peers] needs this process's own peer_id (1 to 16383)",
            );
        }
        Peering { id, peers, listen }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    /// Every problem as "key: message".
    fn problems(text: &str) -> String {
        parse_str(text)
            .unwrap_err()
            .iter()
            .map(|p| format!("{}: {}\n", p.key, p.message))
            .collect()
    }

    const BASE: &str = "[users.a]\npassword = \"a\"\n[databases.d]\nprimary = \"h:5432\"\n";

    #[test]
    fn peering_is_validated() {
        let s = parse_str(&format!(
            "peer_id = 2\npeer_listen = \"127.0.0.1:6442\"\n{BASE}[peers]\n1 = \"10.0.0.1:6441\"\n2 = \"127.0.0.1:6442\"\n"
        ))
        .unwrap();
        assert_eq!(s.peering.id, Some(2));
        assert_eq!(s.peering.peers[&1].to_string(), "10.0.0.1:6441");
        assert_eq!(s.peering.listen.unwrap().port(), 6442);
        assert_eq!(parse_str(BASE).unwrap().peering, Default::default());

        let e = problems(&format!("peer_id = 16384\n{BASE}"));
        assert!(
            e.contains("peer_id: must be 0 (peering off) to 16383"),
            "{e}"
        );
        let e = problems(&format!(
            "peer_id = 1\n{BASE}[peers]\nx = \"h:1\"\n2 = \"nope\"\n"
        ));
        assert!(e.contains("peers.x: peer ids are numbers"), "{e}");
        assert!(e.contains("peers.2: expected \"host:port\""), "{e}");
        let e = problems(&format!("{BASE}[peers]\n1 = \"h:1\"\n"));
        assert!(e.contains("needs this process's own peer_id"), "{e}");
    }
}
