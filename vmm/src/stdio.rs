//! nestbed's own standard output and error: a reader that went away (`nestbed run | head -1`)
//! or a full device loses the text but never panics; a closed pipe is remembered, so the run
//! ends quietly with [`CLOSED`], as a program that SIGPIPE ended would, with traces and
//! statistics files written whole. On a terminal, a status line (the progress line) stays the
//! last line: other output erases it first.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The exit status after a closed stdout or stderr: 128 + SIGPIPE, what a shell shows for a
/// program that SIGPIPE ended.
pub const CLOSED: i32 = 128 + libc::SIGPIPE;

static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether a write to stdout or stderr found no reader.
pub fn closed() -> bool {
    STDERR_CLOSED.load(Ordering::Relaxed) || STDOUT_CLOSED.load(Ordering::Relaxed)
}

fn note(result: io::Result<()>, flag: &AtomicBool) {
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::BrokenPipe) {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Writes `text` to stderr; failures are remembered, never raised.
pub fn to_stderr(text: &str) {
    clear_status_line();
    note(io::stderr().lock().write_all(text.as_bytes()), &STDERR_CLOSED);
}

/// Whether a status line (the progress line) is on the terminal, unfinished.
static STATUS_SHOWN: AtomicBool = AtomicBool::new(false);
/// Held while the status line or text that replaces it is written.
static TERMINAL: Mutex<()> = Mutex::new(());

/// Shows `text` as the terminal's last line (stderr), in place of the previous status line.
pub fn status_line(text: &str) {
    let _held = TERMINAL.lock();
    note(io::stderr().lock().write_all(format!("\r{text}\x1b[K").as_bytes()), &STDERR_CLOSED);
    STATUS_SHOWN.store(true, Ordering::Relaxed);
}

/// Erases the status line, if one is shown, so other output starts on a clean line.
pub fn clear_status_line() {
    if STATUS_SHOWN.load(Ordering::Relaxed) {
        let _held = TERMINAL.lock();
        if STATUS_SHOWN.swap(false, Ordering::Relaxed) {
            note(io::stderr().lock().write_all(b"\r\x1b[K"), &STDERR_CLOSED);
        }
    }
}

/// A writer (the serial console) whose output first erases the status line.
pub struct BesideStatus<W>(pub W);

impl<W: Write> Write for BesideStatus<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        clear_status_line();
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes `text` to stdout and flushes it; failures are remembered, never raised.
pub fn to_stdout(text: &str) {
    let mut out = io::stdout().lock();
    note(out.write_all(text.as_bytes()).and_then(|()| out.flush()), &STDOUT_CLOSED);
}

/// Records that the console (stdout) lost its reader.
pub fn stdout_lost() {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
}

/// The status a command that printed its result ends with: `code`, or [`CLOSED`] when its
/// output found no reader.
pub fn status(code: i32) -> i32 {
    if closed() {
        CLOSED
    } else {
        code
    }
}

/// stderr for the `tracing` subscriber: its own error path would panic on a closed pipe.
#[derive(Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        clear_status_line();
        note(io::stderr().lock().write_all(buf), &STDERR_CLOSED);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}
