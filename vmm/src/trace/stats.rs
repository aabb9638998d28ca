//! Per-reason exit statistics, printed like `perf kvm stat report`: one row per (level,
//! reason, handler) with count, share of exits, share of time, total, mean, min, max and
//! percentiles, as a table, JSON or CSV.

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

/// What the time of an exit in a [`Stats`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeBasis {
    /// `--stats`: nestbed's handling, from KVM_RUN's return to the next VM entry.
    #[default]
    Handling,
    /// `trace report`: from the exit to the next one, handling plus the guest's run.
    Gap,
}

impl TimeBasis {
    /// The header line that says so.
    pub fn describe(self) -> &'static str {
        match self {
            TimeBasis::Handling => {
                "time: nestbed's handling of each exit, from KVM_RUN's return to the next VM entry \
                 (guest run time excluded)"
            }
            TimeBasis::Gap => {
                "time: from each exit to the next exit in the trace (nestbed's handling plus the guest's run; \
                 the last exit gets 0)"
            }
        }
    }

    fn key(self) -> &'static str {
        match self {
            TimeBasis::Handling => "handling",
            TimeBasis::Gap => "gap_to_next_exit",
        }
    }
}

/// How `--stats` prints the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// The percentile the table shows beside the mean.
const PERCENTILE: f64 = 0.99;

#[derive(Debug, Default, Clone)]
pub struct Row {
    pub count: u64,
    pub total: Duration,
    pub min: Duration,
    pub max: Duration,
    hist: super::histogram::Histogram,
}

impl Row {
    pub fn mean(&self) -> Duration {
        self.total / u32::try_from(self.count.max(1)).unwrap_or(u32::MAX)
    }

    /// The time at or below which a fraction `p` of this row's exits took (within 1/32).
    pub fn percentile(&self, p: f64) -> Duration {
        let ns = self.hist.percentile(p).unwrap_or(0);
        Duration::from_nanos(ns).clamp(self.min, self.max.max(self.min))
    }
}

/// (level, reason, handler): a run sees a handful of these, so a short list searched from the
/// most recent hit is cheaper per exit than a map.
type Key = (u8, u32, u8);

#[derive(Debug, Default)]
pub struct Stats {
    rows: Vec<(Key, Row)>,
    last: usize,
    pub wall: Duration,
    /// What an exit's time measures.
    pub basis: TimeBasis,
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

/// One row as the reports show it.
pub struct RowView<'a> {
    pub level: &'static str,
    pub reason_nr: u32,
    pub reason: String,
    pub handler: &'static str,
    pub row: &'a Row,
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
                    self.rows.push((key, Row { min: Duration::MAX, ..Row::default() }));
                    self.rows.len() - 1
                }
            },
        };
        self.last = i;
        let r = &mut self.rows[i].1;
        r.count += 1;
        r.total += took;
        r.min = r.min.min(took);
        r.max = r.max.max(took);
        r.hist.record(took.as_nanos() as u64);
    }

    pub fn total_exits(&self) -> u64 {
        self.rows.iter().map(|(_, r)| r.count).sum()
    }

    /// The time of all exits.
    pub fn total_time(&self) -> Duration {
        self.rows.iter().map(|(_, r)| r.total).sum()
    }

    /// Count of exits with this level and reason, whoever handled them.
    pub fn count(&self, level: Level, reason: u32) -> u64 {
        self.rows.iter().filter(|((l, r, _), _)| *l == level_key(level) && *r == reason).map(|(_, v)| v.count).sum()
    }

    /// Rows in (level, reason, handler) order.
    pub fn rows(&self) -> Vec<RowView<'_>> {
        let mut sorted: Vec<&(Key, Row)> = self.rows.iter().collect();
        sorted.sort_by_key(|(k, _)| *k);
        sorted
            .into_iter()
            .map(|((l, r, h), row)| RowView {
                level: if *l == 1 { "L1" } else { "L2" },
                reason_nr: *r,
                reason: reason_name(*r),
                handler: ["L0", "L1", "script"][usize::from(*h)],
                row,
            })
            .collect()
    }

    /// Rows with the most exits first, as the reports list them.
    fn by_count(&self) -> Vec<RowView<'_>> {
        let mut rows = self.rows();
        rows.sort_by_key(|r| std::cmp::Reverse(r.row.count));
        rows
    }

    fn shares(&self, row: &Row) -> (f64, f64) {
        let exits = 100.0 * row.count as f64 / self.total_exits().max(1) as f64;
        let time = self.total_time().as_nanos();
        let time = if time == 0 { 0.0 } else { 100.0 * row.total.as_nanos() as f64 / time as f64 };
        (exits, time)
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.report(),
            Format::Json => self.json(),
            Format::Csv => self.csv(),
        }
    }

    /// The table, as `perf kvm stat report` lays it out, under a line saying what the time
    /// measures.
    pub fn report(&self) -> String {
        let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.basis.describe());
        let _ = writeln!(
            s,
            "{:<5} {:<26} {:<8} {:>10} {:>8} {:>8} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "level", "exit reason", "handler", "count", "exits%", "time%", "total", "mean", "min", "max", "p99"
        );
        for v in self.by_count() {
            let (exits, time) = self.shares(v.row);
            let _ = writeln!(
                s,
                "{:<5} {:<26} {:<8} {:>10} {:>7.2}% {:>7.2}% {:>10.3}ms {:>8.2}us {:>8.2}us {:>8.2}us {:>8.2}us",
                v.level,
                v.reason,
                v.handler,
                v.row.count,
                exits,
                time,
                v.row.total.as_secs_f64() * 1000.0,
                us(v.row.mean()),
                us(v.row.min),
                us(v.row.max),
                us(v.row.percentile(PERCENTILE)),
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

    /// One JSON object; times in nanoseconds, shares in percent.
    pub fn json(&self) -> String {
        let rows: Vec<serde_json::Value> = self
            .by_count()
            .into_iter()
            .map(|v| {
                let (exits, time) = self.shares(v.row);
                let ns = |d: Duration| d.as_nanos() as u64;
                serde_json::json!({
                    "level": v.level,
                    "reason": v.reason,
                    "reason_nr": v.reason_nr,
                    "handler": v.handler,
                    "count": v.row.count,
                    "exits_pct": exits,
                    "time_pct": time,
                    "total_ns": ns(v.row.total),
                    "mean_ns": ns(v.row.mean()),
                    "min_ns": ns(v.row.min),
                    "max_ns": ns(v.row.max),
                    "p50_ns": ns(v.row.percentile(0.5)),
                    "p99_ns": ns(v.row.percentile(PERCENTILE)),
                })
            })
            .collect();
        let mut out = serde_json::json!({
            "time": self.basis.key(),
            "time_description": self.basis.describe(),
            "total_exits": self.total_exits(),
            "wall_ns": self.wall.as_nanos() as u64,
            "rows": rows,
        });
        if let Some(p) = self.patched {
            out["patched"] = serde_json::json!({
                "sites": p.sites,
                "traps": p.traps,
                "written": p.written,
                "unpatched": p.unpatched,
                "at_run_time": p.at_run_time,
            });
        }
        format!("{out}\n")
    }

    /// A header line, then one line per row; times in nanoseconds, shares in percent.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "level,reason,reason_nr,handler,count,exits_pct,time_pct,total_ns,mean_ns,min_ns,max_ns,p50_ns,p99_ns\n",
        );
        for v in self.by_count() {
            let (exits, time) = self.shares(v.row);
            let ns = |d: Duration| d.as_nanos();
            let _ = writeln!(
                s,
                "{},{},{},{},{},{exits:.4},{time:.4},{},{},{},{},{},{}",
                v.level,
                v.reason,
                v.reason_nr,
                v.handler,
                v.row.count,
                ns(v.row.total),
                ns(v.row.mean()),
                ns(v.row.min),
                ns(v.row.max),
                ns(v.row.percentile(0.5)),
                ns(v.row.percentile(PERCENTILE)),
            );
        }
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
        assert!(r.starts_with("time: nestbed's handling"), "{r}");
        let j: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(j["rows"][0]["count"], 3);
        assert_eq!(j["rows"][0]["min_ns"], 2000);
        assert_eq!(j["rows"][1]["max_ns"], 10_000);
        // 6 us of 16 us.
        assert_eq!(j["rows"][0]["time_pct"], 37.5);
        let csv = s.csv();
        assert_eq!(csv.lines().count(), 3);
        assert!(
            csv.lines().nth(2).unwrap().starts_with("L2,HLT,12,L1,1,25.0000,62.5000,10000,10000,10000,10000"),
            "{csv}"
        );
    }
}
