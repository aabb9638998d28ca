//! The progress line of a long run on a terminal: elapsed time, exits per second, L1's and
//! L2's exits so far and the last exit's reason, redrawn on stderr at most twice a second by a
//! thread of its own, so the vCPU thread only counts (a relaxed atomic add per exit) and a
//! guest that stops exiting still shows time passing.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::exit::Level;
use crate::vmx::exits::reason_name;

/// How often the line is redrawn.
const PERIOD: Duration = Duration::from_millis(500);

/// What the vCPU thread publishes.
#[derive(Debug, Default)]
pub struct Counters {
    exits: [AtomicU64; 2],
    /// The last exit: its level (bit 31 set for L2) and basic reason.
    last: AtomicU32,
}

impl Counters {
    pub fn note(&self, level: Level, reason: u32) {
        let l2 = level == Level::L2;
        self.exits[usize::from(l2)].fetch_add(1, Ordering::Relaxed);
        self.last.store((u32::from(l2) << 31) | (reason & 0xffff) | 0x1_0000, Ordering::Relaxed);
    }
}

/// The running progress line; dropping it stops the thread and erases the line.
pub struct Progress {
    pub counters: Arc<Counters>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the line when stderr is a terminal; None otherwise (pipes, files).
    pub fn start() -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("nestbed-progress".into())
            .spawn(move || {
                let start = Instant::now();
                let (mut last_total, mut last_at) = (0, start);
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                    let now = Instant::now();
                    let (l1, l2) = (c.exits[0].load(Ordering::Relaxed), c.exits[1].load(Ordering::Relaxed));
                    let rate = (l1 + l2 - last_total) as f64 / now.duration_since(last_at).as_secs_f64();
                    (last_total, last_at) = (l1 + l2, now);
                    crate::stdio::status_line(&line(now - start, rate, l1, l2, c.last.load(Ordering::Relaxed)));
                }
            })
            .ok()?;
        Some(Progress { counters, stop: Some(stop), thread: Some(thread) })
    }
}

/// `nestbed: 12.5 s, 41234 exits/s, L1 120345, L2 30001 exits, last L2 IO_INSTRUCTION`.
fn line(elapsed: Duration, rate: f64, l1: u64, l2: u64, last: u32) -> String {
    let mut s = format!("nestbed: {:.1} s, {rate:.0} exits/s, L1 {l1}, L2 {l2} exits", elapsed.as_secs_f64());
    if last != 0 {
        let level = if last >> 31 != 0 { "L2" } else { "L1" };
        s.push_str(&format!(", last {level} {}", reason_name(last & 0xffff)));
    }
    s
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        crate::stdio::clear_status_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_counts_rate_and_the_last_exit() {
        let c = Counters::default();
        assert_eq!(line(Duration::from_millis(1500), 0.0, 0, 0, 0), "nestbed: 1.5 s, 0 exits/s, L1 0, L2 0 exits");
        c.note(Level::L1, 30);
        c.note(Level::L2, 12);
        let text = line(Duration::from_secs(3), 1234.4, 1, 1, c.last.load(Ordering::Relaxed));
        assert_eq!(text, "nestbed: 3.0 s, 1234 exits/s, L1 1, L2 1 exits, last L2 HLT");
    }
}
