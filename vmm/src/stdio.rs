//! nestbed's own standard output and error: a reader that went away (`nestbed run | head -1`)
//! or a full device loses the text but never panics; a closed pipe is remembered, so the run
//! ends quietly with [`CLOSED`], as a program that SIGPIPE ended would, with traces and
//! statistics files written whole.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

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
    note(io::stderr().lock().write_all(text.as_bytes()), &STDERR_CLOSED);
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
