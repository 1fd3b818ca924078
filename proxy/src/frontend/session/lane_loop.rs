//! The lane loop: one task that keeps the clients waiting between transactions and runs their
//! fast-lane units as plain calls, instead of a task per client woken twice per transaction.
//!
//! A client waits here when its session would wait for its next request in transaction mode
//! (not pinned, not listening). Each client has a slot, and the slot a waker of its own: its
//! socket, its server, shutdown and admin wake-ups and its timers wake the slot, and the loop
//! polls the woken slots' sessions by hand: the idle wait ([`Session::poll_idle`]), then, for a
//! unit the fast lane takes and a server free at once, the lane ([`LaneRun::poll`]) and the
//! release. Anything else (a write, a pool wait, PAUSE, a reply the lane hands over, KILL,
//! shutdown, an error) hands the client back to a task of its own with what to go on with
//! ([`HandedBack`]), which parks it here again once it waits for its next request.
//!
//! The loop runs only on a current-thread runtime (`workers = 1`): every session it holds is
//! then polled on that thread, as its task would have been. The slots' wakers are `Send`, as a
//! waker must be; what they queue is behind a mutex that is never contended on one thread.

use std::cell::RefCell;
use std::future::poll_fn;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use bytes::BytesMut;
use tracing::error;

use crate::frontend::relay::fast::{Lane, LaneIo, LaneRun};
use crate::frontend::relay::Outcome;
use crate::shutdown::Phase;

use super::routing::Later;
use super::run::{observed, Run};
use super::wait::{Idle, IdleWait};
use super::{Begun, HandedBack, Session};

/// Slots polled per poll of the loop's task before it yields to the runtime's other tasks.
const BUDGET: usize = 128;

thread_local! {
    /// The loop of this thread's runtime, if it runs one.
    static LOOP: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// Starts the lane loop on this thread's runtime if it is a current-thread one; returns
/// whether it did.
pub(crate) fn start() -> bool {
    let current = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
    if !current {
        return false;
    }
    let shared = Arc::new(Shared::default());
    LOOP.with(|l| *l.borrow_mut() = Some(shared.clone()));
    tokio::spawn(tokio::task::unconstrained(serve(shared)));
    true
}

/// Whether this thread runs a lane loop.
pub(super) fn running() -> bool {
    LOOP.with(|l| l.borrow().is_some())
}

/// Hands a session to the loop (see [`Session::parks`]).
pub(super) fn park(session: Box<Session>) {
    let shared = LOOP.with(|l| l.borrow().clone());
    match shared {
        Some(shared) => {
            lock(&shared.arrivals).push(session);
            shared.pending.store(true, Ordering::Release);
            shared.task.wake();
        }
        // Not reached (`parks` asked `running`): the session goes on in a task of its own.
        None => {
            tokio::spawn(session.run(None, Some(Box::new(HandedBack::Wait))));
        }
    }
}

impl Session {
    /// Whether the client may wait in the lane loop: a loop runs, transaction mode, no server
    /// held, nothing pgtier watches for it (LISTEN).
    pub(super) fn parks(&self) -> bool {
        !self.holds_server()
            && self.listening.is_none()
            && self.listen_statements.is_none()
            && running()
    }

    /// Begins serving `first` in the loop, in `area`: its run on a server the fast lane
    /// takes. Else what a task of the client's own goes on with.
    fn begin_in_loop(
        &mut self,
        first: BytesMut,
        area: &mut Option<Running>,
    ) -> Result<(), HandedBack> {
        if self.needs_refresh() {
            return Err(HandedBack::Request(first));
        }
        // What pgtier answers itself (a Parse batch of named statements, a pgtier or
        // LISTEN-family statement) is answered in the client's task.
        if let Some(local) = self.local_request(&first) {
            return Err(HandedBack::Local(first, Box::new(local)));
        }
        let (mut serving, analysed) = match self.route_now(&first) {
            Ok(routed) => routed,
            // The task asks the primary's position first.
            Err(Later::Causal) => return Err(HandedBack::Request(first)),
            // The task follows the replica choice made here.
            Err(Later::Wait(routed)) => {
                return Err(HandedBack::Begun(first, Begun::Routed(routed)))
            }
        };
        let retry = serving.on_replica;
        let Some(unit) = self.lane_of(&mut serving, analysed.as_ref(), &first) else {
            let run = Box::new(self.begin_run(serving, retry, analysed));
            return Err(HandedBack::Begun(first, Begun::Run(run, None)));
        };
        let lane = LaneRun::new(&first, unit, &self.shutdown);
        // Built in place: a run is hundreds of bytes.
        *area = Some(Running {
            run: self.begin_run(serving, retry, analysed),
            first,
            lane,
        });
        Ok(())
    }
}

/// What the loop shares with the wakers of its slots and with the sessions that park.
#[derive(Default)]
struct Shared {
    /// Something was queued since the loop last looked (it then locks the queues; most
    /// looks after a batch find nothing, and cost one atomic swap).
    pending: AtomicBool,
    /// Slots woken since the loop last looked.
    woken: Mutex<Vec<usize>>,
    /// Sessions handed to the loop since it last looked (boxed as they come and as their
    /// slots keep them: a pointer moves, not the session).
    #[allow(clippy::vec_box)]
    arrivals: Mutex<Vec<Box<Session>>>,
    /// The loop's task.
    task: AtomicWaker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The waker of one slot: queues the slot once until the loop polls it.
struct SlotWaker {
    shared: Arc<Shared>,
    slot: usize,
    queued: AtomicBool,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.shared.woken).push(self.slot);
            self.shared.pending.store(true, Ordering::Release);
            self.shared.task.wake();
        }
    }
}

/// A unit in the fast lane: its run, its bytes, the lane's state.
struct Running {
    run: Run,
    first: BytesMut,
    lane: LaneRun,
}

/// Room for a [`Running`], kept between runs (its allocation is reused).
type Area = Box<Option<Running>>;

/// Most [`Area`]s the loop keeps for reuse.
const SPARE_AREAS: usize = 64;

/// One client's place in the loop.
struct Slot {
    waker: Arc<SlotWaker>,
    /// The same, as a `Waker` (made once).
    as_waker: Waker,
    occupant: Occupant,
}

/// What a slot holds.
struct Occupant {
    /// The client (None: the slot is free).
    session: Option<Box<Session>>,
    /// Its idle wait, while it waits for a request.
    wait: Option<IdleWait>,
    /// Its unit in the fast lane, while one runs.
    area: Option<Area>,
}

/// Takes the loop off its thread when its task ends (the runtime shut down, or a bug
/// panicked outside the guard of a client's poll): sessions that would park then go on in
/// tasks of their own instead of a queue nobody reads.
struct Retire;

impl Drop for Retire {
    fn drop(&mut self) {
        // Never a panic in a drop: at thread exit the slot may be gone already.
        let _ = LOOP.try_with(|l| l.try_borrow_mut().map(|mut l| l.take()));
    }
}

/// The loop's task: places the sessions that arrive, polls the slots that were woken.
async fn serve(shared: Arc<Shared>) {
    let _retire = Retire;
    let mut slots: Vec<Slot> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut batch: Vec<usize> = Vec::new();
    let mut arrivals: Vec<Box<Session>> = Vec::new();
    let mut spare: Vec<Area> = Vec::new();
    poll_fn(|cx| {
        shared.task.register(cx.waker());
        let mut polled = 0;
        while shared.pending.swap(false, Ordering::AcqRel) {
            std::mem::swap(&mut *lock(&shared.arrivals), &mut arrivals);
            std::mem::swap(&mut *lock(&shared.woken), &mut batch);
            for session in arrivals.drain(..) {
                let slot = match free.pop() {
                    Some(i) => i,
                    None => {
                        let waker = Arc::new(SlotWaker {
                            shared: shared.clone(),
                            slot: slots.len(),
                            queued: AtomicBool::new(false),
                        });
                        let as_waker = Waker::from(waker.clone());
                        slots.push(Slot {
                            waker,
                            as_waker,
                            occupant: Occupant {
                                session: None,
                                wait: None,
                                area: None,
                            },
                        });
                        slots.len() - 1
                    }
                };
                slots[slot].occupant.wait = Some(session.idle_wait());
                slots[slot].occupant.session = Some(session);
                // A request may be there already: look now.
                batch.push(slot);
            }
            // One guard against panics for the whole batch (it is not free): a panic ends
            // the client being polled, and the rest of the batch goes on.
            let mut at = 0;
            while at < batch.len() {
                let stepped = catch_unwind(AssertUnwindSafe(|| {
                    while let Some(&i) = batch.get(at) {
                        at += 1;
                        let slot = &mut slots[i];
                        slot.waker.queued.store(false, Ordering::Release);
                        if poll_slot(slot, &mut spare) {
                            free.push(i);
                        }
                    }
                }));
                if let Err(panic) = stepped {
                    let i = batch[at - 1];
                    if contain(&mut slots[i].occupant, &*panic) {
                        free.push(i);
                    }
                }
            }
            polled += batch.len();
            batch.clear();
            if polled >= BUDGET {
                // The others' turn; what was woken meanwhile waits in the queues.
                shared.pending.store(true, Ordering::Release);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        Poll::Pending
    })
    .await
}

/// Polls one slot's client; returns whether the slot became free (the client left the loop).
/// A free slot's waker may still fire (what the client waited on keeps it until it waits
/// again): such a poll finds nothing.
fn poll_slot(slot: &mut Slot, spare: &mut Vec<Area>) -> bool {
    if slot.occupant.session.is_none() {
        return false;
    }
    let mut cx = Context::from_waker(&slot.as_waker);
    step(&mut slot.occupant, spare, &mut cx);
    slot.occupant.session.is_none()
}

/// After a panic in polling a client: as in its task, its server is dropped (closed, never
/// returned) and it gets XX000 before it is closed. Returns whether the slot became free.
fn contain(slot: &mut Occupant, panic: &(dyn std::any::Any + Send)) -> bool {
    slot.wait = None;
    slot.area = None;
    let Some(session) = slot.session.take() else {
        return false;
    };
    let panic = crate::panics::message(panic);
    // The task closes it with XX000 (see `Session::run`).
    error!(peer = %session.client.entry.peer, user = %session.user(), database = %session.database(), panic, "internal error while serving a client: client closed, its server connection closed");
    hand_over(session, HandedBack::Panicked);
    true
}

/// Polls a slot's client until it waits, or leaves the loop (its session is None then).
fn step(slot: &mut Occupant, spare: &mut Vec<Area>, cx: &mut Context<'_>) {
    loop {
        let Some(session) = slot.session.as_mut() else {
            return;
        };
        if let Some(area) = slot.area.as_mut() {
            let Some(Running { run, first, lane }) = area.as_mut() else {
                slot.area = None;
                continue;
            };
            let polled = lane.poll(
                &mut LaneIo {
                    client: &mut session.stream,
                    server: &mut run.serving.server.conn().io(),
                    cbuf: first,
                    statements: &mut session.statements,
                    measured: &mut run.measured,
                    metrics: &run.runtime.metrics,
                    context: observed(&run.upstream, run.serving.node),
                    limits: &run.runtime.limits,
                },
                &session.shutdown,
                cx,
            );
            let Poll::Ready(end) = polled else {
                return;
            };
            // The common end, during no shutdown: released here (in place: a run is hundreds
            // of bytes), the client waits again. Else the client's task ends the run as its
            // own lane's end would have.
            if !matches!(end, Lane::Answered) || session.shutdown.phase() >= Phase::Draining {
                if let Some(Running { run, first, .. }) = area.take() {
                    let begun = Begun::Run(Box::new(run), Some(end));
                    leave(slot, HandedBack::Begun(first, begun));
                }
                return;
            }
            let mut end = session.lane_end(run, first, Outcome::Idle, false);
            session.account(run, &mut end);
            let ran = session.release_idle(&mut run.serving, end);
            // The run is over: dropped in place, its pool permit with it.
            **area = None;
            if let Some(area) = slot.area.take().filter(|_| spare.len() < SPARE_AREAS) {
                spare.push(area);
            }
            match ran {
                None if session.parks() => slot.wait = Some(session.idle_wait()),
                None => return leave(slot, HandedBack::Wait),
                Some(rest) => return leave(slot, HandedBack::Request(rest)),
            }
            continue;
        }
        let Some(wait) = slot.wait.as_mut() else {
            return;
        };
        match session.poll_idle(wait, cx) {
            Poll::Pending => return,
            Poll::Ready(Idle::Request(first)) => {
                slot.wait = None;
                let mut area = spare.pop().unwrap_or_else(|| Box::new(None));
                match session.begin_in_loop(first, &mut area) {
                    Ok(()) => slot.area = Some(area),
                    Err(back) => {
                        spare.push(area);
                        return leave(slot, back);
                    }
                }
            }
            // Not listening: no notifications to deliver; a task would go on waiting.
            Poll::Ready(Idle::Deliver) => return leave(slot, HandedBack::Wait),
            Poll::Ready(end) => return leave(slot, HandedBack::Ended(end)),
        }
    }
}

/// The slot's client leaves the loop for a task of its own, which goes on with `back`.
fn leave(slot: &mut Occupant, back: HandedBack) {
    slot.wait = None;
    slot.area = None;
    if let Some(session) = slot.session.take() {
        hand_over(session, back);
    }
}

/// Hands a client to a task of its own, which goes on with `back`.
fn hand_over(session: Box<Session>, back: HandedBack) {
    tokio::spawn(session.run(None, Some(Box::new(back))));
}
