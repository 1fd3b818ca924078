//! LISTEN/UNLISTEN inside a transaction block: staged when the statement runs, in effect at
//! the block's COMMIT, dropped at ROLLBACK or when the block fails, as in Postgres.
//!
//! A staged LISTEN of a channel the client does not listen on reserves the channel on the hub
//! at once, so that the listening connection LISTENs on it before the client is answered and
//! the switch at COMMIT is a map update with no round trip. Notifications on a channel that is
//! only reserved are not queued for the client, except those its own transaction sent (by the
//! same server backend): Postgres delivers those, since they commit with the LISTEN.

use std::collections::HashSet;
use std::sync::Arc;

use crate::protocol::SqlState;
use crate::sql::listen::ListenCommand;

use super::{lock, Hub, Listeners, Listening, Source, LIMIT_EXCEEDED};

/// Most LISTEN/UNLISTEN statements one transaction block may stage.
pub const MAX_STAGED: usize = 1000;

/// LISTEN-family statements of a client's current transaction block, not in effect yet.
#[derive(Debug, Default)]
pub struct Staged {
    actions: Vec<ListenCommand>,
}

impl Staged {
    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// At the block's COMMIT: the staged statements take effect, in order (a LISTEN then an
    /// UNLISTEN of a channel leave it as it was). Returns how many channels the client
    /// listens on now.
    pub fn commit(&mut self, slot: Option<&Listening>) -> usize {
        let actions = std::mem::take(&mut self.actions);
        let Some(l) = slot else {
            return 0;
        };
        let mut st = lock(&l.hub.state);
        let mut inbox = lock(&l.mailbox.inbox);
        let mut wanted = inbox.channels.clone();
        for a in &actions {
            match a {
                ListenCommand::Listen(c) => {
                    wanted.insert(c.clone());
                }
                ListenCommand::Unlisten(c) => {
                    wanted.remove(c);
                }
                ListenCommand::UnlistenAll => wanted.clear(),
            }
        }
        let removed: Vec<String> = inbox.channels.difference(&wanted).cloned().collect();
        for c in &removed {
            inbox.channels.remove(c);
        }
        inbox.drop_queued(&removed);
        // Every LISTEN of a channel not listened on reserved it when it was staged.
        let reserved = std::mem::take(&mut inbox.reserved);
        let mut leaving = removed;
        for c in reserved {
            if wanted.contains(&c) {
                inbox.channels.insert(c);
            } else {
                leaving.push(c);
            }
        }
        let count = inbox.channels.len();
        drop(inbox);
        l.hub.leave(&mut st, l.mailbox.id, leaving);
        count
    }

    /// The block ended without committing: nothing staged takes effect.
    pub fn discard(&mut self, slot: Option<&Listening>) {
        self.actions.clear();
        if let Some(l) = slot {
            let mut st = lock(&l.hub.state);
            let reserved: HashSet<String> = std::mem::take(&mut lock(&l.mailbox.inbox).reserved);
            l.hub.leave(&mut st, l.mailbox.id, reserved);
        }
    }
}

impl Listeners {
    /// Stages `cmd`, run in the client's transaction block by server backend `backend` (its
    /// pid). Ok(Some(hub)): a LISTEN whose channel the listening connection does not listen on
    /// yet; wait for it ([`Hub::until_listening`]) before the client is answered. Err: the
    /// ERROR to answer (the global channel bound, or [`MAX_STAGED`]).
    pub fn stage(
        &self,
        slot: &mut Option<Box<Listening>>,
        staged: &mut Staged,
        cmd: &ListenCommand,
        backend: i32,
        source: impl FnOnce() -> Source,
    ) -> Result<Option<Arc<Hub>>, (SqlState, String)> {
        if staged.actions.len() >= MAX_STAGED {
            return Err((
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!("pgtier: more than {MAX_STAGED} LISTEN/UNLISTEN statements in one transaction block"),
            ));
        }
        let mut wait = None;
        if let ListenCommand::Listen(channel) = cmd {
            let source = source();
            let listening = self.member(slot, &source);
            let listens = lock(&listening.mailbox.inbox).channels.contains(channel);
            if !listens {
                let hub = listening.hub.clone();
                hub.listen(&listening.mailbox, channel, source, Some(backend))
                    .map_err(|m| (LIMIT_EXCEEDED, m))?;
                wait = (!hub.is_listening(channel)).then_some(hub);
            }
        }
        staged.actions.push(cmd.clone());
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use bytes::BytesMut;

    use super::super::tests::{hub, join, member, note};
    use super::*;

    /// What staging a LISTEN records (without starting the connection task).
    fn reserve(l: &Listening, channel: &str, pid: i32) {
        let mut st = lock(&l.hub.state);
        if !st.channels.contains_key(channel) {
            l.hub.channels_total.fetch_add(1, Ordering::Relaxed);
        }
        st.channels
            .entry(channel.to_owned())
            .or_default()
            .insert(l.mailbox.id, l.mailbox.clone());
        let mut inbox = lock(&l.mailbox.inbox);
        inbox.reserved.insert(channel.to_owned());
        inbox.reserved_pid = pid;
    }

    fn staged(cmds: &[ListenCommand]) -> Staged {
        Staged {
            actions: cmds.to_vec(),
        }
    }

    #[test]
    fn a_reserved_channel_delivers_only_the_own_transactions_notifications_until_commit() {
        use ListenCommand::*;
        let h = hub();
        let a = member(&h, 1, 10);
        join(&a, "old");
        reserve(&a, "new", 42);
        h.dispatch(b"new", note(7, "new", "before commit, another backend"));
        h.dispatch(b"new", note(42, "new", "own transaction"));
        h.dispatch(b"old", note(7, "old", "listened"));
        let mut out = BytesMut::new();
        assert_eq!(a.take(&mut out), Ok(2));
        assert!(!out.windows(7).any(|w| w == b"another"));
        assert_eq!(staged(&[Listen("new".into())]).commit(Some(&a)), 2);
        h.dispatch(b"new", note(7, "new", "after"));
        assert_eq!(a.take(&mut out), Ok(1));
        assert_eq!(h.channels_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn commit_applies_in_order_and_discard_gives_reservations_back() {
        use ListenCommand::*;
        let h = hub();
        let a = member(&h, 1, 10);
        join(&a, "x");
        reserve(&a, "y", 1);
        reserve(&a, "z", 1);
        let mut s = staged(&[
            Listen("y".into()),
            Unlisten("x".into()),
            Listen("z".into()),
            Unlisten("z".into()),
        ]);
        assert_eq!(s.commit(Some(&a)), 1);
        assert!(s.is_empty());
        assert_eq!(h.wanted(), HashSet::from(["y".to_owned()]));
        reserve(&a, "w", 1);
        let mut s = staged(&[Listen("w".into()), UnlistenAll]);
        s.discard(Some(&a));
        assert_eq!(h.wanted(), HashSet::from(["y".to_owned()]));
        assert_eq!(h.channels_total.load(Ordering::Relaxed), 1);
        let mut s = staged(&[UnlistenAll]);
        assert_eq!(s.commit(Some(&a)), 0);
        assert!(h.wanted().is_empty());
        assert_eq!(h.channels_total.load(Ordering::Relaxed), 0);
    }
}
