//! LISTEN/NOTIFY for transaction-mode clients without pinning them: pgtier answers their
//! `LISTEN`/`UNLISTEN` itself and keeps, per database, one server connection on the primary
//! that listens on the union of its clients' channels (see `conn`). Each notification goes
//! into a bounded mailbox of every client listening on its channel; the session writes the
//! mailbox to its client when the client is idle (between transactions).
//!
//! One connection per database, not per (database, user): Postgres checks no privilege on
//! LISTEN and delivers a notification to every session listening on its channel in the
//! database, whatever its role, so one listener sees exactly what each client would. It logs
//! in with the credentials of the primary pool of the latest client that LISTENed.

mod conn;
mod staged;

pub use staged::{Staged, MAX_STAGED};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::backend::Upstream;
use crate::metrics::Metrics;
use crate::protocol::SqlState;
use crate::router::route::Router;
use crate::sql::listen::ListenCommand;

/// SQLSTATE of the FATAL that closes a client whose mailbox overflowed, and of the ERROR for a
/// LISTEN beyond `max_listen_channels`: configuration_limit_exceeded (a configured limit).
pub const LIMIT_EXCEEDED: SqlState = SqlState("53400");

/// Limits of the LISTEN machinery (from the `[pgtier]` section).
#[derive(Debug, Clone, Copy)]
pub struct ListenLimits {
    /// Notifications queued for one client before it is closed.
    pub max_pending: usize,
    /// Distinct channels listened on, across all databases.
    pub max_channels: usize,
    /// Limit on connecting to the primary (`server_connect_timeout`).
    pub connect_timeout: Duration,
}

/// Every database's hub; one per process, kept across reloads.
#[derive(Debug)]
pub struct Listeners {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    /// Distinct channels over all hubs (the global bound).
    channels: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
}

/// How the listening connection reaches the primary: the router (topology) and pools of the
/// latest client that LISTENed.
#[derive(Debug, Clone)]
pub struct Source {
    /// The database's router (its topology names the primary).
    pub router: Arc<Router>,
    /// The client's pools (node addresses and login).
    pub upstream: Arc<Upstream>,
    /// Limits as of that client's LISTEN.
    pub limits: ListenLimits,
}

/// One database's listeners.
#[derive(Debug)]
pub struct Hub {
    database: String,
    state: Mutex<HubState>,
    /// Wakes the connection task (channels changed).
    changed: tokio::sync::Notify,
    /// Wakes clients waiting for their LISTEN to be in effect (the connection synced).
    synced: tokio::sync::Notify,
    channels_total: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct HubState {
    /// Channel -> listening mailboxes by id.
    channels: HashMap<String, HashMap<u64, Arc<Mailbox>>>,
    /// The connection task is running.
    task: bool,
    /// How to reach the primary.
    source: Option<Source>,
    /// Connections made so far (the first is epoch 1).
    epoch: u64,
    /// The listening connection is open (for SHOW LISTENERS).
    connected: bool,
    /// Channels the listening connection has LISTENed on (its last round trip succeeded).
    active: HashSet<String>,
}

/// A client's queue of notifications not yet written to it.
#[derive(Debug)]
pub struct Mailbox {
    id: u64,
    max: usize,
    inbox: Mutex<Inbox>,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Bytes>,
    /// More than `max` were pending: the client is to be closed.
    overflowed: bool,
    /// The session's idle wait, to wake when something arrives.
    waker: Option<Waker>,
    /// Channels this client listens on.
    channels: HashSet<String>,
    /// Channels of LISTENs staged in the client's transaction block (see `staged`): in the
    /// hub, but not delivered until its COMMIT.
    reserved: HashSet<String>,
    /// The server backend running that transaction: its own notifications on a reserved
    /// channel are delivered (they are committed with the LISTEN).
    reserved_pid: i32,
}

/// A client's membership in its database's hub: leaves every channel when dropped.
#[derive(Debug)]
pub struct Listening {
    hub: Arc<Hub>,
    mailbox: Arc<Mailbox>,
}

/// Why a client's notifications cannot be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflowed {
    /// The limit it went past.
    pub max: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps inconsistent beyond one entry: go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Listeners {
    /// No hubs yet; counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Listeners {
        Listeners {
            hubs: Mutex::default(),
            channels: Arc::default(),
            metrics,
            next_id: AtomicU64::new(1),
        }
    }

    /// Applies `cmd` for a client (`slot`: its membership, created at its first LISTEN).
    /// Ok(Some(hub)): a LISTEN whose channel the listening connection does not listen on yet;
    /// wait for it ([`Hub::until_listening`]) before the client is answered, so that every
    /// notification committed after the answer reaches it, as on Postgres.
    /// Err: the message of the ERROR to answer (the global channel bound).
    pub fn apply(
        &self,
        slot: &mut Option<Box<Listening>>,
        cmd: &ListenCommand,
        source: impl FnOnce() -> Source,
    ) -> Result<Option<Arc<Hub>>, String> {
        match cmd {
            ListenCommand::Listen(channel) => {
                let source = source();
                let listening = self.member(slot, &source);
                let hub = listening.hub.clone();
                hub.listen(&listening.mailbox, channel, source, None)?;
                Ok((!hub.is_listening(channel)).then_some(hub))
            }
            ListenCommand::Unlisten(channel) => {
                if let Some(l) = slot.as_ref() {
                    l.hub.unlisten(&l.mailbox, Some(channel));
                }
                Ok(None)
            }
            ListenCommand::UnlistenAll => {
                if let Some(l) = slot.as_ref() {
                    l.hub.unlisten(&l.mailbox, None);
                }
                Ok(None)
            }
        }
    }

    /// The client's membership, made at its first LISTEN.
    fn member<'a>(&self, slot: &'a mut Option<Box<Listening>>, source: &Source) -> &'a Listening {
        slot.get_or_insert_with(|| {
            let hub = self.hub(source.upstream.database());
            Box::new(Listening {
                hub,
                mailbox: Arc::new(Mailbox {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    max: source.limits.max_pending.max(1),
                    inbox: Mutex::default(),
                }),
            })
        })
    }

    /// The hub of `database`, created at first use.
    fn hub(&self, database: &str) -> Arc<Hub> {
        lock(&self.hubs)
            .entry(database.to_owned())
            .or_insert_with(|| {
                Arc::new(Hub {
                    database: database.to_owned(),
                    state: Mutex::default(),
                    changed: tokio::sync::Notify::new(),
                    synced: tokio::sync::Notify::new(),
                    channels_total: self.channels.clone(),
                    metrics: self.metrics.clone(),
                })
            })
            .clone()
    }

    /// SHOW LISTENERS: (database, channel, listening clients), sorted.
    pub fn rows(&self) -> Vec<(String, String, usize)> {
        let hubs: Vec<Arc<Hub>> = lock(&self.hubs).values().cloned().collect();
        let mut rows = Vec::new();
        for hub in hubs {
            let st = lock(&hub.state);
            for (ch, boxes) in &st.channels {
                rows.push((hub.database.clone(), ch.clone(), boxes.len()));
            }
        }
        rows.sort();
        rows
    }
}

impl Hub {
    /// Adds `mailbox` to `channel`; Err: the global channel bound is reached. `reserve`: for a
    /// LISTEN staged in a transaction block by this server backend (pid): the channel is only
    /// reserved for the client (see `staged`).
    fn listen(
        self: &Arc<Self>,
        mailbox: &Arc<Mailbox>,
        channel: &str,
        source: Source,
        reserve: Option<i32>,
    ) -> Result<(), String> {
        let mut st = lock(&self.state);
        let max = source.limits.max_channels;
        st.source = Some(source);
        if !st.channels.contains_key(channel) {
            // Reserve a slot of the global bound; give it back if over.
            if self.channels_total.fetch_add(1, Ordering::Relaxed) >= max {
                self.channels_total.fetch_sub(1, Ordering::Relaxed);
                return Err(format!(
                    "pgtier: too many channels listened on through pgtier (max_listen_channels = {max})"
                ));
            }
            st.channels.insert(channel.to_owned(), HashMap::new());
            self.changed.notify_one();
        }
        if let Some(boxes) = st.channels.get_mut(channel) {
            boxes.insert(mailbox.id, mailbox.clone());
        }
        let mut inbox = lock(&mailbox.inbox);
        match reserve {
            None => inbox.channels.insert(channel.to_owned()),
            Some(pid) => {
                inbox.reserved_pid = pid;
                inbox.reserved.insert(channel.to_owned())
            }
        };
        drop(inbox);
        if !st.task {
            st.task = true;
            tokio::spawn(conn::run(self.clone()));
        }
        Ok(())
    }

    /// Whether the listening connection listens on `channel` now.
    fn is_listening(&self, channel: &str) -> bool {
        lock(&self.state).active.contains(channel)
    }

    /// Waits until the listening connection listens on `channel`; false if that took longer
    /// than `limit` (no primary, or it refused).
    pub async fn until_listening(&self, channel: &str, limit: Duration) -> bool {
        let work = async {
            loop {
                let synced = self.synced.notified();
                tokio::pin!(synced);
                synced.as_mut().enable();
                if self.is_listening(channel) {
                    return;
                }
                synced.await;
            }
        };
        crate::timers::timeout(limit, work).await.is_ok()
    }

    /// Notes what the listening connection now listens on, and wakes the waiting clients.
    fn synced(&self, active: &HashSet<String>) {
        lock(&self.state).active.clone_from(active);
        self.synced.notify_waiters();
    }

    /// Removes `mailbox` from `channel` (None: from all its channels, reserved ones too). A
    /// channel nobody listens on any more is UNLISTENed by the connection task.
    fn unlisten(&self, mailbox: &Mailbox, channel: Option<&str>) {
        let mut st = lock(&self.state);
        let names: Vec<String> = {
            let mut inbox = lock(&mailbox.inbox);
            let mut names: Vec<String> = match channel {
                Some(ch) => inbox.channels.take(ch).into_iter().collect(),
                None => inbox.channels.drain().collect(),
            };
            inbox.drop_queued(&names);
            if channel.is_none() {
                names.extend(inbox.reserved.drain());
            }
            names
        };
        self.leave(&mut st, mailbox.id, names);
    }

    /// Takes mailbox `id` off each of `names`; a channel left with no mailbox is UNLISTENed.
    fn leave(&self, st: &mut HubState, id: u64, names: impl IntoIterator<Item = String>) {
        let mut emptied = false;
        for name in names {
            if let Some(boxes) = st.channels.get_mut(&name) {
                boxes.remove(&id);
                if boxes.is_empty() {
                    st.channels.remove(&name);
                    self.channels_total.fetch_sub(1, Ordering::Relaxed);
                    emptied = true;
                }
            }
        }
        if emptied {
            self.changed.notify_one();
        }
    }

    /// The channels the listening connection should be listening on.
    fn wanted(&self) -> HashSet<String> {
        lock(&self.state).channels.keys().cloned().collect()
    }

    /// Where to connect, or None (and the task marked ended) if nobody listens any more.
    fn source_or_end(&self) -> Option<Source> {
        let mut st = lock(&self.state);
        if st.channels.is_empty() {
            st.task = false;
            st.source = None;
            return None;
        }
        st.source.clone()
    }

    /// Notes a new listening connection; `tell`: one was lost before it, so every listening
    /// client is told (a NoticeResponse) that notifications sent meanwhile may be lost.
    fn connected(&self, tell: bool) {
        let mut st = lock(&self.state);
        st.connected = true;
        st.epoch += 1;
        self.metrics
            .listen_connections
            .with_label_values(&[&self.database])
            .set(1);
        if !tell {
            return;
        }
        let mut notice = BytesMut::new();
        crate::protocol::messages::notice_response(
            &mut notice,
            SqlState("01000"),
            &format!("pgtier: the LISTEN connection to the primary was re-established (pgtier listen epoch {}); notifications sent while it was down may have been lost", st.epoch),
        );
        let notice = notice.freeze();
        let mut seen = HashSet::new();
        for boxes in st.channels.values() {
            for (id, mailbox) in boxes {
                if seen.insert(*id) {
                    mailbox.push(notice.clone(), None, &self.metrics, &self.database);
                }
            }
        }
    }

    /// Notes that the listening connection closed.
    fn disconnected(&self) {
        let mut st = lock(&self.state);
        st.connected = false;
        st.active.clear();
        drop(st);
        self.metrics
            .listen_connections
            .with_label_values(&[&self.database])
            .set(0);
    }

    /// Queues a NotificationResponse frame (as the server sent it) for every client listening
    /// on `channel`.
    fn dispatch(&self, channel: &[u8], frame: Bytes) {
        let st = lock(&self.state);
        let Some(boxes) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| st.channels.get(c))
        else {
            return;
        };
        let only = Some((channel, notification_pid(&frame)));
        for mailbox in boxes.values() {
            mailbox.push(frame.clone(), only, &self.metrics, &self.database);
        }
    }
}

/// The sending backend's pid of a NotificationResponse frame.
fn notification_pid(frame: &[u8]) -> i32 {
    frame
        .get(5..9)
        .map_or(0, |b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
}

impl Inbox {
    /// Drops queued notifications of `names`: not delivered after the UNLISTEN, as on
    /// Postgres (it checks at delivery).
    fn drop_queued(&mut self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        self.queue.retain(|f| {
            notification_channel(f).is_none_or(|c| !names.iter().any(|n| n.as_bytes() == c))
        });
    }
}

/// The channel of a NotificationResponse frame (None: another message).
fn notification_channel(frame: &[u8]) -> Option<&[u8]> {
    if frame.first() != Some(&b'A') {
        return None;
    }
    let rest = frame.get(9..)?;
    rest.iter().position(|&b| b == 0).map(|end| &rest[..end])
}

impl Mailbox {
    /// Queues `frame`; past `max` pending, the client is marked for closing instead (its queue
    /// is dropped: it will not be read). `only`: a notification (channel, sender pid), not
    /// queued on a channel only reserved by a LISTEN staged in a transaction block, unless its
    /// own transaction sent it.
    fn push(&self, frame: Bytes, only: Option<(&[u8], i32)>, metrics: &Metrics, database: &str) {
        let mut inbox = lock(&self.inbox);
        if inbox.overflowed {
            return;
        }
        if let Some((channel, pid)) = only.filter(|_| !inbox.reserved.is_empty()) {
            let active = std::str::from_utf8(channel).is_ok_and(|c| inbox.channels.contains(c));
            if !active && pid != inbox.reserved_pid {
                return;
            }
        }
        if inbox.queue.len() >= self.max {
            inbox.overflowed = true;
            inbox.queue = VecDeque::new();
            // Once per client. A client pinned after it LISTENed through pgtier (see README)
            // never comes back to be closed: this line is how an operator sees it.
            tracing::warn!(database, max = self.max, "a client listening through pgtier has more than max_pending_notifications undelivered: its queue is dropped and it is closed when next between transactions");
            metrics
                .listen_clients_dropped
                .with_label_values(&[database])
                .inc();
        } else {
            inbox.queue.push_back(frame);
        }
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }
}

impl Listening {
    /// Ready when notifications are pending (or the mailbox overflowed); otherwise wakes
    /// `cx` when one arrives.
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inbox = lock(&self.mailbox.inbox);
        if inbox.overflowed || !inbox.queue.is_empty() {
            return Poll::Ready(());
        }
        match &inbox.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inbox.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Moves the pending notifications into `out` (and counts them delivered); Err if the
    /// mailbox overflowed (the client must be closed).
    pub fn take(&self, out: &mut BytesMut) -> Result<usize, Overflowed> {
        let mut inbox = lock(&self.mailbox.inbox);
        if inbox.overflowed {
            return Err(Overflowed {
                max: self.mailbox.max,
            });
        }
        let n = inbox.queue.len();
        for frame in inbox.queue.drain(..) {
            out.extend_from_slice(&frame);
        }
        drop(inbox);
        if n > 0 {
            self.hub
                .metrics
                .notifications_delivered
                .with_label_values(&[&self.hub.database])
                .inc_by(n as u64);
        }
        Ok(n)
    }

    /// Stops listening on `channel`.
    pub fn unlisten(&self, channel: &str) {
        self.hub.unlisten(&self.mailbox, Some(channel));
    }

    /// The channels this client listens on, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.mailbox.inbox).channels.iter().cloned().collect();
        v.sort();
        v
    }

    /// Channels this client listens on.
    pub fn channel_count(&self) -> usize {
        lock(&self.mailbox.inbox).channels.len()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.hub.unlisten(&self.mailbox, None);
    }
}

#[cfg(test)]
mod tests;
