//! Load-time binary patching of sensitive instructions: each one is replaced by INT3 and
//! padding of the same length, and a table maps the address back to the original instruction,
//! so that it traps to nestbed on any KVM host. `scan` finds the sites without KVM; the table
//! and the report are here.

pub mod scan;

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use scan::{patched_bytes, scan, Class, FoundBy, Scan, ScanError, Selection, Site};

/// The sites of a scan by guest-physical address.
#[derive(Debug, Clone, Default)]
pub struct PatchTable {
    sites: BTreeMap<u64, Site>,
}

impl PatchTable {
    pub fn new(scan: &Scan) -> Self {
        PatchTable { sites: scan.sites.iter().map(|s| (s.addr, s.clone())).collect() }
    }

    /// The site that starts at `addr` (where its INT3 traps).
    pub fn lookup(&self, addr: u64) -> Option<&Site> {
        self.sites.get(&addr)
    }

    /// The site whose bytes include `addr` (e.g. a trap in the padding).
    pub fn site_containing(&self, addr: u64) -> Option<&Site> {
        self.sites.range(..=addr).next_back().map(|(_, s)| s).filter(|s| addr < s.end())
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.sites.values()
    }
}

/// One line per site (address, length, class, instruction, proof), then the count per class.
pub fn report(scan: &Scan) -> String {
    let mut out = String::new();
    for s in &scan.sites {
        let _ = writeln!(out, "{:#010x}  {:>2}  {:<13} {:<40} {}", s.addr, s.len, s.class.name(), s.text, s.found_by);
    }
    let mut counts: BTreeMap<Class, usize> = BTreeMap::new();
    for s in &scan.sites {
        *counts.entry(s.class).or_default() += 1;
    }
    let _ = writeln!(out, "{} sites", scan.sites.len());
    for (class, n) in counts {
        let _ = writeln!(out, "  {:<13} {n}", class.name());
    }
    let _ = writeln!(
        out,
        "{} instructions proven ({} by descent, {} by sweep); {} sweep runs rejected; {} branch conflicts",
        scan.descent_instructions + scan.sweep_instructions,
        scan.descent_instructions,
        scan.sweep_instructions,
        scan.rejected_runs,
        scan.conflicts.len()
    );
    out
}

#[cfg(test)]
mod tests;
