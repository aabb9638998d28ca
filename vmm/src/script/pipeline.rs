//! Scripts that only observe, run on a second thread: the vCPU thread queues a copy of each
//! exit and goes on; the worker calls `on_exit` on the copies in order.
//!
//! The queue is a single-producer single-consumer ring (`rtrb`): handing an exit over is a copy
//! into a slot and one store, never a lock or a system call on the vCPU thread. The worker
//! empties it, then naps until the ring is half full (the vCPU thread wakes it then, once per
//! half ring) or a few milliseconds passed. A full ring makes the vCPU thread wait: memory
//! stays bounded and a script slower than the guest slows the guest, as inline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use rtrb::{Consumer, Producer, PushError, RingBuffer};

use super::{ExitContext, ExitRecord, Inline, ScriptOptions, Source};
use crate::error::Error;
use crate::exit::Level;
use crate::machine::vm::CpuidOverride;

/// Exits queued before the vCPU thread waits for the worker.
const QUEUE_LIMIT: usize = 1 << 12;
/// How long the worker sleeps when it finds the queue empty, unless woken earlier because the
/// queue is half full or a request came: how late a script's output can be. Long on purpose:
/// the second CPU's activity slows the vCPU thread on the hosts measured (BENCHMARKS.md has
/// rows for it), and a worker that napped 20 µs to 1 ms cost the counting example 10 to 20% of
/// exit throughput where 10 ms naps cost 2 to 9%.
const NAP: Duration = Duration::from_millis(10);
/// How long the vCPU thread waits for room in a full queue before it looks again.
const FULL_WAIT: Duration = Duration::from_micros(20);

/// What the vCPU thread asks of the worker besides exits; each answers on its channel.
enum Request {
    OnStart(Sender<Result<Vec<(Level, CpuidOverride)>, Error>>),
    /// Answer once every exit queued before was seen.
    Flush(Sender<()>),
    /// See every queued exit, run `on_stop`, and end.
    OnStop(Sender<Result<(), Error>>),
}

struct Shared {
    /// The first error of an `on_exit` (with `--on-script-error stop`); the worker skips
    /// further exits once it is set.
    error: Mutex<Option<Error>>,
    failed: AtomicBool,
}

impl Shared {
    fn take_error(&self) -> Option<Error> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

pub(super) struct Pipeline {
    queue: Producer<ExitRecord>,
    /// The worker, to wake it from its nap.
    thread: Thread,
    shared: Arc<Shared>,
    requests: Option<Sender<Request>>,
    worker: Option<JoinHandle<()>>,
    stopped: bool,
}

impl Pipeline {
    /// Starts the worker, which compiles the scripts and runs their top-level statements on
    /// its own thread (a Rhai engine stays on the thread that made it).
    pub fn start(sources: Vec<Source>, opts: ScriptOptions) -> Result<Self, Error> {
        let (queue, exits) = RingBuffer::new(QUEUE_LIMIT);
        let shared = Arc::new(Shared { error: Mutex::new(None), failed: AtomicBool::new(false) });
        let (requests, inbox) = mpsc::channel();
        let (loaded_tx, loaded) = mpsc::channel();
        let sh = shared.clone();
        let worker = std::thread::Builder::new()
            .name("nestbed-scripts".into())
            .stack_size(super::STACK)
            .spawn(move || {
                // Stop signals go to the vCPU thread, whose KVM_RUN they must interrupt; the
                // hooks here see them through the stop count (`guard`).
                crate::runner::signals::block_here();
                match Inline::load(&sources, opts) {
                    Ok(scripts) => {
                        let _ = loaded_tx.send(Ok(()));
                        work(scripts, &sh, exits, &inbox);
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::Script(format!("starting the script thread: {e}")))?;
        let thread = worker.thread().clone();
        let mut p = Pipeline { queue, thread, shared, requests: Some(requests), worker: Some(worker), stopped: false };
        match loaded.recv() {
            Ok(Ok(())) => Ok(p),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(p.lost()),
        }
    }

    pub fn on_start(&mut self) -> Result<Vec<(Level, CpuidOverride)>, Error> {
        self.ask(Request::OnStart)?
    }

    /// Queues `record`; returns an error an earlier exit raised in a script.
    pub fn on_exit(&mut self, mut record: ExitRecord) -> Result<(), Error> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.error());
        }
        // The worker ended (it panicked): nothing would see this exit.
        if self.queue.is_abandoned() {
            return Err(self.lost());
        }
        loop {
            match self.queue.push(record) {
                Ok(()) => {
                    // The cached count only falls between refreshes (no load of the worker's
                    // index on every exit); it reaches half once per refresh.
                    if self.queue.cached_slots() == QUEUE_LIMIT / 2 && self.queue.slots() <= QUEUE_LIMIT / 2 {
                        self.thread.unpark();
                    }
                    return Ok(());
                }
                Err(PushError::Full(r)) => record = r,
            }
            self.thread.unpark();
            if self.shared.failed.load(Ordering::Acquire) {
                return Err(self.error());
            }
            if self.worker.as_ref().is_none_or(JoinHandle::is_finished) {
                return Err(self.lost());
            }
            std::thread::sleep(FULL_WAIT);
        }
    }

    /// Waits until the worker has seen every queued exit; returns its error if one raised one.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.stopped {
            return Ok(());
        }
        self.ask(Request::Flush)?;
        match self.shared.failed.load(Ordering::Acquire) {
            true => Err(self.error()),
            false => Ok(()),
        }
    }

    /// Lets the worker see every queued exit, runs `on_stop` and ends the worker; an error an
    /// exit raised that was not returned yet is returned here.
    pub fn on_stop(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let stopped = self.ask(Request::OnStop);
        self.join();
        let earlier = self.shared.take_error();
        match (earlier, stopped) {
            (Some(e), _) => Err(e),
            (None, Ok(r)) => r,
            (None, Err(e)) => Err(e),
        }
    }

    fn ask<T>(&mut self, request: impl FnOnce(Sender<T>) -> Request) -> Result<T, Error> {
        let (tx, rx) = mpsc::channel();
        let sent = self.requests.as_ref().is_some_and(|r| r.send(request(tx)).is_ok());
        self.thread.unpark();
        match (sent, rx.recv()) {
            (true, Ok(v)) => Ok(v),
            _ => Err(self.lost()),
        }
    }

    /// The worker's error (taken once; later calls say the scripts stopped).
    fn error(&self) -> Error {
        self.shared.take_error().unwrap_or_else(|| Error::Script("the scripts stopped after an error".into()))
    }

    /// The worker ended without answering: it panicked.
    fn lost(&mut self) -> Error {
        self.join();
        self.shared.take_error().unwrap_or_else(|| Error::Script("the script thread ended unexpectedly".into()))
    }

    fn join(&mut self) {
        self.requests = None;
        self.thread.unpark();
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                tracing::error!("the script thread panicked");
            }
        }
    }
}

impl Drop for Pipeline {
    /// Ends the worker without `on_stop` (a reload): closing the request channel ends it.
    fn drop(&mut self) {
        self.join();
    }
}

/// The worker: exits first, then requests, napping when there is neither.
fn work(mut scripts: Inline, shared: &Shared, mut exits: Consumer<ExitRecord>, inbox: &Receiver<Request>) {
    loop {
        if drain(&mut scripts, shared, &mut exits) {
            continue;
        }
        match inbox.try_recv() {
            Ok(Request::OnStart(reply)) => {
                let _ = reply.send(scripts.on_start());
            }
            Ok(Request::Flush(reply)) => {
                drain(&mut scripts, shared, &mut exits);
                let _ = reply.send(());
            }
            Ok(Request::OnStop(reply)) => {
                drain(&mut scripts, shared, &mut exits);
                let _ = reply.send(scripts.on_stop());
                return;
            }
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => std::thread::park_timeout(NAP),
        }
    }
}

/// Runs `on_exit` on every queued exit; false when the queue was empty.
fn drain(scripts: &mut Inline, shared: &Shared, exits: &mut Consumer<ExitRecord>) -> bool {
    let mut any = false;
    while let Ok(record) = exits.pop() {
        any = true;
        if shared.failed.load(Ordering::Relaxed) {
            continue;
        }
        let seq = record.exit.seq;
        let mut ctx = ExitContext::with_record(record, None);
        if let Err(e) = scripts.on_exit(&mut ctx) {
            let e = match e {
                Error::Script(m) => Error::Script(format!("{m}, on exit #{seq} (pipelined: nestbed stopped later)")),
                other => other,
            };
            *shared.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            shared.failed.store(true, Ordering::Release);
        }
    }
    any
}
