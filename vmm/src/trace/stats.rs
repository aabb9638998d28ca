//! Per-reason exit statistics, printed like `perf kvm stat report`: one row per (level,
//! reason, handler) with count, share, total and mean handling time (from the exit to the next
//! VM entry, in userspace).

use std::fmt::Write as _;
use std::time::Duration;

use crate::exit::{Handler, Level};
use crate::vmx::exits::reason_name;

/// What load-time patching did in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatchStats {
    /// Sensitive instructions patched into traps.
    pub sites: usize,
    /// Traps taken at them.
    pub traps: u64,
    /// Sites the guest wrote over (patched again or dropped), and sites dropped because their
    /// bytes mean another instruction in the CPU's mode.
    pub written: u64,
    /// Unpatched sites of patched classes that the host trapped by itself.
    pub unpatched: usize,
    /// Sites patched at run time after their instruction took #UD.
    pub at_run_time: usize,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Row {
    pub count: u64,
    pub total: Duration,
}

/// (level, reason, handler): a run sees a handful of these, so a short list searched from the
/// most recent hit is cheaper per exit than a map.
type Key = (u8, u32, u8);

#[derive(Debug, Default)]
pub struct Stats {
    rows: Vec<(Key, Row)>,
    last: usize,
    pub wall: Duration,
    /// Where the run's time went, phase by phase.
    pub phases: super::Phases,
    /// Load-time patching's figures, when it is on.
    pub patched: Option<PatchStats>,
    /// Where the `--trace` file stopped at `--trace-limit`, if it did.
    pub trace_truncated: Option<super::writer::Truncated>,
}

fn level_key(l: Level) -> u8 {
    match l {
        Level::L1 => 1,
        Level::L2 => 2,
    }
}

fn handler_key(h: Handler) -> u8 {
    match h {
        Handler::L0 => 0,
        Handler::L1 => 1,
        Handler::Script => 2,
    }
}

impl Stats {
    pub fn new(phases: super::Phases) -> Self {
        Stats { phases, ..Stats::default() }
    }

    pub fn record(&mut self, level: Level, reason: u32, handler: Handler, took: Duration) {
        let key = (level_key(level), reason, handler_key(handler));
        let i = match self.rows.get(self.last) {
            Some((k, _)) if *k == key => self.last,
            _ => match self.rows.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    self.rows.push((key, Row::default()));
                    self.rows.len() - 1
                }
            },
        };
        self.last = i;
        let r = &mut self.rows[i].1;
        r.count += 1;
        r.total += took;
    }

    pub fn total_exits(&self) -> u64 {
        self.rows.iter().map(|(_, r)| r.count).sum()
    }

    /// Count of exits with this level and reason, whoever handled them.
    pub fn count(&self, level: Level, reason: u32) -> u64 {
        self.rows.iter().filter(|((l, r, _), _)| *l == level_key(level) && *r == reason).map(|(_, v)| v.count).sum()
    }

    /// Rows as (level, reason name, handler, count, total).
    pub fn rows(&self) -> Vec<(&'static str, String, &'static str, Row)> {
        let mut sorted: Vec<&(Key, Row)> = self.rows.iter().collect();
        sorted.sort_by_key(|(k, _)| *k);
        sorted
            .into_iter()
            .map(|&((l, r, h), row)| {
                let level = if l == 1 { "L1" } else { "L2" };
                let handler = ["L0", "L1", "script"][usize::from(h)];
                (level, reason_name(r), handler, row)
            })
            .collect()
    }

    pub fn report(&self) -> String {
        let total = self.total_exits().max(1);
        let mut rows = self.rows();
        rows.sort_by_key(|r| std::cmp::Reverse(r.3.count));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<5} {:<26} {:<8} {:>10} {:>8} {:>12} {:>10}",
            "level", "exit reason", "handler", "count", "share", "total time", "mean"
        );
        for (level, name, handler, row) in rows {
            let mean = row.total.as_nanos() as f64 / row.count.max(1) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "{:<5} {:<26} {:<8} {:>10} {:>7.2}% {:>10.3}ms {:>8.2}us",
                level,
                name,
                handler,
                row.count,
                100.0 * row.count as f64 / total as f64,
                row.total.as_secs_f64() * 1000.0,
                mean
            );
        }
        if let Some(PatchStats { sites, traps, written, unpatched, at_run_time }) = self.patched {
            let _ = writeln!(
                s,
                "patched: {sites} sensitive instructions, {traps} traps taken at them, {written} written over by the guest, \
                 {unpatched} unpatched sites trapped by the host, {at_run_time} patched at run time after #UD"
            );
        }
        if let Some(t) = self.trace_truncated {
            let _ = writeln!(
                s,
                "trace: stopped at --trace-limit {} bytes after {} exits ({} bytes written)",
                t.limit, t.lines, t.bytes
            );
        }
        let _ = writeln!(s, "total: {} exits in {:.3}s", self.total_exits(), self.wall.as_secs_f64());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_shares() {
        let mut s = Stats::default();
        for _ in 0..3 {
            s.record(Level::L1, 30, Handler::L0, Duration::from_micros(2));
        }
        s.record(Level::L2, 12, Handler::L1, Duration::from_micros(10));
        assert_eq!(s.total_exits(), 4);
        assert_eq!(s.count(Level::L1, 30), 3);
        let r = s.report();
        assert!(r.contains("IO_INSTRUCTION"), "{r}");
        assert!(r.contains("75.00%"), "{r}");
        assert!(r.contains("L2    HLT"), "{r}");
    }
}
