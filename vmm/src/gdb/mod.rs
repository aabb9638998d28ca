//! The gdb remote server: `--gdb [ADDR]` listens (loopback by default), one client at a time;
//! `--gdb-wait` holds the guest before its first instruction until gdb continues. While a
//! client is attached the guest runs inside the gdbstub event loop; a watcher thread turns
//! data from gdb (Ctrl-C) into a kick out of KVM_RUN.

mod arch;
mod conn;
mod monitor;
mod regs;
mod shadow;
mod target;

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use gdbstub::conn::ConnectionExt;
use gdbstub::stub::{DisconnectReason, GdbStub};

use crate::error::Error;
use crate::runner::debug::Link;
use crate::runner::signals;
use crate::runner::{Outcome, Report, Runner, Stop};
use target::{Debuggee, EventLoop};

pub use monitor::HELP as MONITOR_HELP;

pub const DEFAULT_ADDR: &str = "127.0.0.1:1234";

#[derive(Debug, Clone)]
pub struct GdbOptions {
    pub addr: String,
    /// Hold before the first guest instruction until gdb continues.
    pub wait: bool,
    /// End nestbed when the client detaches, instead of letting the guest run on.
    pub exit_on_detach: bool,
}

/// Runs the machine with the gdb server.
pub fn run(runner: Runner, opts: GdbOptions) -> Result<Report, Error> {
    let listener =
        TcpListener::bind(&opts.addr).map_err(|e| Error::Config(format!("--gdb {}: cannot listen: {e}", opts.addr)))?;
    let local = listener.local_addr().map_err(|e| Error::Config(format!("--gdb {}: {e}", opts.addr)))?;
    if !local.ip().is_loopback() {
        crate::error::to_stderr(&format!(
            "nestbed: warning: the gdb server listens on {local}, reachable from other machines; whoever connects \
             controls the guest\n"
        ));
    }
    crate::error::to_stderr(&format!(
        "nestbed: gdb server on {local}{}\n",
        if opts.wait { ", waiting for gdb before the first instruction" } else { "" }
    ));
    runner.run_with(move |r| serve(r, listener, &opts))
}

/// Sends SIGUSR1 to the thread running the guest: KVM_RUN returns at once (signals.rs).
#[derive(Clone, Copy)]
struct Kicker(libc::pthread_t);

impl Kicker {
    fn current() -> Self {
        // SAFETY: pthread_self has no preconditions.
        Kicker(unsafe { libc::pthread_self() })
    }

    fn kick(self) {
        // SAFETY: the thread is the one running `serve`, alive while any helper thread can call
        // this (they stop when the session or run ends); SIGUSR1 has a handler installed.
        unsafe { libc::pthread_kill(self.0, libc::SIGUSR1) };
    }
}

enum SessionEnd {
    Finished(Outcome),
    Detached,
}

fn serve(mut r: Runner, listener: TcpListener, opts: &GdbOptions) -> (Runner, Result<Outcome, Error>) {
    let link = Arc::new(Link::default());
    r.set_debug_link(link.clone());
    let kicker = Kicker::current();
    let busy = Arc::new(AtomicBool::new(false));
    let (conn_tx, conn_rx) = mpsc::channel::<TcpStream>();
    {
        let (link, busy) = (link.clone(), busy.clone());
        std::thread::spawn(move || {
            signals::block_here();
            for stream in listener.incoming().flatten() {
                if busy.swap(true, Ordering::SeqCst) {
                    refuse(stream);
                    continue;
                }
                if conn_tx.send(stream).is_err() {
                    return;
                }
                link.attach.store(true, Ordering::SeqCst);
                kicker.kick();
            }
        });
    }
    if opts.wait {
        let stream = loop {
            if let Some(o) = stop_outcome() {
                return (r, Ok(o));
            }
            match conn_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(s) => break s,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return (r, Err(Error::Config("the gdb listener stopped".into())));
                }
            }
        };
        link.attach.store(false, Ordering::SeqCst);
        let (back, end) = session_then(r, stream, &link, kicker, &busy, opts);
        r = back;
        if let Some(o) = end {
            return (r, Ok(o));
        }
    }
    loop {
        if link.attach.swap(false, Ordering::SeqCst) {
            if let Ok(stream) = conn_rx.try_recv() {
                let (back, end) = session_then(r, stream, &link, kicker, &busy, opts);
                r = back;
                if let Some(o) = end {
                    return (r, Ok(o));
                }
            }
            continue;
        }
        match r.run_until_stop() {
            Ok(Stop::Finished(o)) => return (r, Ok(o)),
            // Without a client, only a connecting one (handled above) matters.
            Ok(Stop::Debug(_) | Stop::Debugger) => link.data.store(false, Ordering::SeqCst),
            Err(e) => return (r, Err(e)),
        }
    }
}

/// One client's session; `Some` when the run is over.
fn session_then(
    r: Runner,
    stream: TcpStream,
    link: &Arc<Link>,
    kicker: Kicker,
    busy: &AtomicBool,
    opts: &GdbOptions,
) -> (Runner, Option<Outcome>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    crate::error::to_stderr(&format!("nestbed: gdb connected from {peer}\n"));
    let (r, end) = session(r, stream, link, kicker);
    busy.store(false, Ordering::SeqCst);
    let outcome = match end {
        SessionEnd::Finished(o) => Some(o),
        SessionEnd::Detached if opts.exit_on_detach => {
            Some(Outcome::Debugger("gdb detached (--gdb-exit-on-detach)".into()))
        }
        SessionEnd::Detached => {
            crate::error::to_stderr("nestbed: gdb detached; the guest runs on\n");
            None
        }
    };
    (r, outcome)
}

fn session(mut r: Runner, stream: TcpStream, link: &Arc<Link>, kicker: Kicker) -> (Runner, SessionEnd) {
    let _ = stream.set_nodelay(true);
    let rearm = match stream.try_clone() {
        Ok(s) => spawn_watcher(s, link.clone(), kicker),
        Err(e) => {
            tracing::warn!("gdb connection: {e}");
            return (r, SessionEnd::Detached);
        }
    };
    r.debug_attach();
    let conn: Box<dyn ConnectionExt<Error = std::io::Error>> = Box::new(conn::Checked::new(stream));
    let mut target = Debuggee::new(r, link.clone(), rearm);
    let result = GdbStub::new(conn).run_blocking::<EventLoop>(&mut target);
    // A stop request ends the session wherever it waited (conn.rs), and the run with it.
    let outcome = target.outcome.take().or_else(stop_outcome);
    let mut r = target.runner;
    link.data.store(false, Ordering::SeqCst);
    let end = match (result, outcome) {
        (_, Some(o)) => SessionEnd::Finished(o),
        (Ok(DisconnectReason::Kill), None) => SessionEnd::Finished(Outcome::Debugger("killed by gdb".into())),
        (Ok(_), None) => SessionEnd::Detached,
        (Err(e), None) => {
            crate::error::to_stderr(&format!("nestbed: gdb connection ended: {e}\n"));
            SessionEnd::Detached
        }
    };
    if matches!(end, SessionEnd::Detached) {
        r.debug_detach();
    }
    (r, end)
}

/// How the run ends when a signal or `--timeout` asked it to stop.
fn stop_outcome() -> Option<Outcome> {
    match signals::cause() {
        signals::INTERRUPT => Some(Outcome::Interrupted),
        signals::TIMEOUT => Some(Outcome::Timeout),
        _ => None,
    }
}

/// A second client while one is attached: told so and closed.
fn refuse(mut stream: TcpStream) {
    let msg = "nestbed: another gdb is attached";
    let sum = msg.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    let _ = write!(stream, "$O{}#{sum:02x}", msg.bytes().map(|b| format!("{b:02x}")).collect::<String>());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Watches the connection while the guest runs: on data (or hang-up) it raises `link.data`
/// and kicks the vCPU, then waits to be re-armed. Ends with the session.
fn spawn_watcher(stream: TcpStream, link: Arc<Link>, kicker: Kicker) -> mpsc::Sender<()> {
    let (tx, rx): (mpsc::Sender<()>, Receiver<()>) = mpsc::channel();
    std::thread::spawn(move || {
        signals::block_here();
        while rx.recv().is_ok() {
            loop {
                let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd for an fd this thread owns (a clone of the stream).
                let n = unsafe { libc::poll(&mut pfd, 1, 100) };
                if n > 0 {
                    link.data.store(true, Ordering::SeqCst);
                    kicker.kick();
                    break;
                }
                match rx.try_recv() {
                    Err(TryRecvError::Disconnected) => return,
                    Ok(()) | Err(TryRecvError::Empty) => {}
                }
                std::thread::sleep(Duration::from_millis(0));
            }
        }
    });
    tx
}
