//! Every logged-in client, by its pgtier-issued cancel key: where its query runs (for
//! CancelRequest), and what the admin console and the metrics show about it (SHOW CLIENTS,
//! cl_* columns of SHOW POOLS). State changes are relaxed atomic stores: nothing is locked on
//! the data path except at login and logout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::backend::CancelTarget;
use crate::clock::anchored_now;
use crate::protocol::startup::CancelKey;

use super::cancel_slot::CancelSlot;

/// Distinct application names the registry shares between clients (others are per client).
const MAX_SHARED_APP_NAMES: usize = 256;

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, holding no server (transaction mode).
    Idle = 0,
    /// Waiting for a server connection.
    Waiting = 1,
    /// Running a transaction on a server (or holding one: session mode, pinned).
    Active = 2,
}

impl ClientState {
    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    /// The name SHOW CLIENTS and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// One client as the registry knows it.
#[derive(Debug)]
pub struct ClientEntry {
    /// Where its query runs now, for cancel requests.
    pub cancel: CancelSlot,
    /// Its address.
    pub peer: SocketAddr,
    /// Client-facing user name (interned: shared by the user's clients).
    pub user: Arc<str>,
    /// Client-facing database name (interned).
    pub database: Arc<str>,
    /// `application_name` from its startup packet (interned while few are in use).
    pub application_name: Arc<str>,
    /// When it logged in (µs since the epoch).
    pub connected_at: u64,
    state: AtomicU8,
    /// When its last request began waiting for a server (µs since the epoch; login time
    /// before its first request).
    since: AtomicU64,
    /// Pinned to its server (1) or not (0), see [`ClientEntry::set_pinned`].
    pinned: AtomicU8,
    /// Node id of the server serving it now (`NO_NODE`: none).
    node: AtomicU8,
    /// Its named prepared statements (as of its last request).
    prepared: AtomicU32,
    /// Channels pgtier listens on for it (transaction mode, see `notify`).
    listening: AtomicU32,
    /// Its TLS version and cipher suite (None: plain text).
    pub tls: Option<crate::tls::TlsInfo>,
}

/// `ClientEntry::node` when no server serves the client.
const NO_NODE: u8 = u8::MAX;

impl ClientEntry {
    /// What it is doing, and when its last request began (µs since the epoch).
    pub fn state(&self) -> (ClientState, u64) {
        (
            ClientState::from_u8(self.state.load(Ordering::Relaxed)),
            self.since.load(Ordering::Relaxed),
        )
    }

    /// Records a state change.
    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Records that a new request began waiting for a server at `at_us` (SHOW CLIENTS
    /// `request_time`, `wait`; µs of [`crate::clock::unix_micros_at`]): the caller's own clock reading, so
    /// no extra one.
    pub fn set_waiting(&self, at_us: u64) {
        self.since.store(at_us, Ordering::Relaxed);
        self.set_state(ClientState::Waiting);
    }

    /// Records that the client holds its server until it disconnects.
    pub fn set_pinned(&self) {
        self.pinned.store(1, Ordering::Relaxed);
    }

    /// Whether the client is pinned to its server.
    pub fn pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed) != 0
    }

    /// Records the server now serving the client (None when it has none): where cancels go,
    /// and its node id (SHOW POOLS counts the client on that node's row).
    pub fn set_server(&self, target: Option<(CancelTarget, usize)>) {
        self.cancel.set(target.map(|t| t.0));
        let node = target.map_or(NO_NODE, |t| t.1.min(usize::from(NO_NODE - 1)) as u8);
        self.node.store(node, Ordering::Relaxed);
    }

    /// Records how many named prepared statements it has.
    pub fn set_prepared(&self, n: usize) {
        self.prepared
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Records how many channels pgtier listens on for it.
    pub fn set_listening(&self, channels: usize) {
        self.listening.store(
            u32::try_from(channels).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }

    /// How many channels pgtier listens on for it (SHOW CLIENTS `listening`).
    pub fn listening(&self) -> u32 {
        self.listening.load(Ordering::Relaxed)
    }

    /// How many named prepared statements it has (SHOW CLIENTS `prepared_statements`).
    pub fn prepared(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// The node id of the server serving it now.
    pub fn node(&self) -> Option<usize> {
        let n = self.node.load(Ordering::Relaxed);
        (n != NO_NODE).then_some(usize::from(n))
    }
}

/// Who a new client is, for [`ClientRegistry::register`].
#[derive(Debug)]
pub struct NewClient<'a> {
    /// Its address.
    pub peer: SocketAddr,
    /// Client-facing user name.
    pub user: &'a str,
    /// Client-facing database name.
    pub database: &'a str,
    /// `application_name` from its startup packet.
    pub application_name: &'a str,
    /// Its TLS version and cipher suite (None: plain text).
    pub tls: Option<crate::tls::TlsInfo>,
}

/// All logged-in clients.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    /// This process's peer id, put in every key it issues (None: peering off).
    peer_id: Option<u16>,
    map: Mutex<HashMap<CancelKey, Arc<ClientEntry>>>,
    /// Logged-in clients per user and per database (the client limits), with the name the
    /// entries share. Bounded by the clients logged in: a name leaves with its last client.
    counts: Mutex<Counts>,
    /// The first application names seen, shared by the entries (at most
    /// `MAX_SHARED_APP_NAMES`: others are per client).
    app_names: Mutex<Vec<Arc<str>>>,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<Arc<str>, u32>,
    databases: HashMap<Arc<str>, u32>,
}

/// How many clients a user and a database may have logged in at once (None: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientLimits {
    /// `max_user_client_connections` of the user.
    pub per_user: Option<u32>,
    /// `max_db_client_connections` of the database.
    pub per_database: Option<u32>,
}

/// A client over one of its [`ClientLimits`].
#[derive(Debug, Error)]
#[error("too many client connections for {what} \"{name}\" ({key} = {max})")]
pub struct OverClientLimit {
    /// "user" or "database".
    pub what: &'static str,
    /// The user or database name.
    pub name: String,
    /// The config key.
    pub key: &'static str,
    /// Its value.
    pub max: u32,
}

/// A registered client; unregisters on drop.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    /// The cancel key given to the client.
    pub key: CancelKey,
    /// What the registry knows about it.
    pub entry: Arc<ClientEntry>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
        let mut counts = self.registry.counts();
        leave(&mut counts.users, &self.entry.user);
        leave(&mut counts.databases, &self.entry.database);
    }
}

/// One client fewer under `name`.
fn leave(map: &mut HashMap<Arc<str>, u32>, name: &str) {
    if let Some(n) = map.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            map.remove(name);
        }
    }
}

/// One client more under `name`, unless `max` are there already; returns the shared name.
fn enter(map: &mut HashMap<Arc<str>, u32>, name: &str, max: Option<u32>) -> Option<Arc<str>> {
    let n = map.get(name).copied().unwrap_or(0);
    if max.is_some_and(|m| n >= m) {
        return None;
    }
    let key = match map.get_key_value(name) {
        Some((k, _)) => k.clone(),
        None => name.into(),
    };
    map.insert(key.clone(), n + 1);
    Some(key)
}

impl ClientRegistry {
    /// An empty registry whose keys name peer `peer_id` (None: peering off).
    pub fn new(peer_id: Option<u16>) -> ClientRegistry {
        ClientRegistry {
            peer_id,
            ..ClientRegistry::default()
        }
    }

    /// The peer id its keys carry.
    pub fn peer_id(&self) -> Option<u16> {
        self.peer_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Arc<ClientEntry>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared copy of an application name (an idle client then costs no allocation for
    /// it), for the first `MAX_SHARED_APP_NAMES` distinct ones.
    fn intern_app_name(&self, name: &str) -> Arc<str> {
        let mut names = self.app_names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = names.iter().find(|n| ***n == *name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        if names.len() < MAX_SHARED_APP_NAMES {
            names.push(n.clone());
        }
        n
    }

    /// Clients logged in as `user` now.
    pub fn user_clients(&self, user: &str) -> u32 {
        self.counts().users.get(user).copied().unwrap_or(0)
    }

    /// Clients logged in to `database` now.
    pub fn database_clients(&self, database: &str) -> u32 {
        self.counts().databases.get(database).copied().unwrap_or(0)
    }

    /// Registers a new client under a fresh random cancel key, unless its user or database
    /// has as many clients as `limits` allow.
    pub fn register(
        self: &Arc<Self>,
        who: NewClient<'_>,
        limits: ClientLimits,
    ) -> Result<ClientHandle, OverClientLimit> {
        let (user, database) = {
            let mut counts = self.counts();
            let Some(user) = enter(&mut counts.users, who.user, limits.per_user) else {
                return Err(OverClientLimit {
                    what: "user",
                    name: who.user.to_owned(),
                    key: "max_user_client_connections",
                    max: limits.per_user.unwrap_or(0),
                });
            };
            let Some(database) = enter(&mut counts.databases, who.database, limits.per_database)
            else {
                leave(&mut counts.users, who.user);
                return Err(OverClientLimit {
                    what: "database",
                    name: who.database.to_owned(),
                    key: "max_db_client_connections",
                    max: limits.per_database.unwrap_or(0),
                });
            };
            (user, database)
        };
        let now = anchored_now();
        let entry = Arc::new(ClientEntry {
            cancel: CancelSlot::default(),
            peer: who.peer,
            user,
            database,
            application_name: self.intern_app_name(who.application_name),
            connected_at: now,
            state: AtomicU8::new(ClientState::Idle as u8),
            since: AtomicU64::new(now),
            pinned: AtomicU8::new(0),
            listening: AtomicU32::new(0),
            node: AtomicU8::new(NO_NODE),
            prepared: AtomicU32::new(0),
            tls: who.tls,
        });
        let mut rng = rand::rng();
        let mut map = self.lock();
        let key = loop {
            let key = super::peer_cancel::issue(self.peer_id, &mut rng);
            if !map.contains_key(&key) {
                break key;
            }
        };
        map.insert(key, entry.clone());
        Ok(ClientHandle {
            registry: self.clone(),
            key,
            entry,
        })
    }

    /// Where a cancel with this key should go, if the client is running a query.
    pub fn cancel_target(&self, key: &CancelKey) -> Option<CancelTarget> {
        self.lock().get(key)?.cancel.get()
    }

    /// Every client with its cancel key's pid (the `ptr` SHOW CLIENTS prints).
    pub fn all(&self) -> Vec<(i32, Arc<ClientEntry>)> {
        self.lock()
            .iter()
            .map(|(k, e)| (k.pid, e.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_register_change_state_and_leave() {
        let r = Arc::new(ClientRegistry::default());
        let h = r
            .register(
                NewClient {
                    peer: "127.0.0.1:5000".parse().unwrap(),
                    user: "u",
                    database: "d",
                    application_name: "app",
                    tls: None,
                },
                ClientLimits::default(),
            )
            .unwrap();
        assert_eq!(r.all().len(), 1);
        assert_eq!(h.entry.state().0, ClientState::Idle);
        h.entry.set_waiting(crate::clock::anchored_now());
        assert_eq!(r.all()[0].1.state().0, ClientState::Waiting);
        assert!(r.cancel_target(&h.key).is_none());
        drop(h);
        assert!(r.all().is_empty());
    }

    #[test]
    fn client_limits_count_per_user_and_per_database() {
        let r = Arc::new(ClientRegistry::default());
        let who = |user| NewClient {
            peer: "127.0.0.1:5000".parse().unwrap(),
            user,
            database: "d",
            application_name: "",
            tls: None,
        };
        let limits = ClientLimits {
            per_user: Some(1),
            per_database: Some(2),
        };
        let a = r.register(who("a"), limits).unwrap();
        let e = r.register(who("a"), limits).unwrap_err();
        assert_eq!(
            (e.what, e.key, e.max),
            ("user", "max_user_client_connections", 1)
        );
        let b = r.register(who("b"), limits).unwrap();
        let e = r.register(who("c"), limits).unwrap_err();
        assert_eq!((e.what, e.max), ("database", 2));
        // A refusal by the database limit left no count behind for the user.
        assert_eq!(r.user_clients("c"), 0);
        assert_eq!((r.user_clients("a"), r.database_clients("d")), (1, 2));
        drop(a);
        drop(b);
        assert_eq!((r.user_clients("a"), r.database_clients("d")), (0, 0));
        assert!(r.counts().users.is_empty() && r.counts().databases.is_empty());
        r.register(who("c"), limits).unwrap();
    }
}
