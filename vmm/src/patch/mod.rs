//! Load-time binary patching of sensitive instructions: each one is replaced by INT3 and
//! padding of the same length, and a table maps the address back to the original instruction,
//! so that it traps to nestbed on any KVM host. `scan` finds the sites without KVM; the table
//! and the report are here.

pub mod scan;

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use scan::{patched_bytes, scan, Class, FoundBy, Scan, ScanError, Selection, Site};

/// The sites of a scan by guest-physical address, and which of them have their trap written.
#[derive(Debug, Clone, Default)]
pub struct PatchTable {
    sites: BTreeMap<u64, (Site, bool)>,
}

impl PatchTable {
    /// Every site of `scan`, none trapped yet.
    pub fn new(scan: &Scan) -> Self {
        PatchTable { sites: scan.sites.iter().map(|s| (s.addr, (s.clone(), false))).collect() }
    }

    /// The site that starts at `addr` (where its INT3 traps).
    pub fn lookup(&self, addr: u64) -> Option<&Site> {
        self.sites.get(&addr).map(|(s, _)| s)
    }

    /// The site that starts at `addr` when its trap is written.
    pub fn trapped(&self, addr: u64) -> Option<&Site> {
        self.sites.get(&addr).filter(|(_, on)| *on).map(|(s, _)| s)
    }

    /// The site whose bytes include `addr` (e.g. a trap in the padding).
    pub fn site_containing(&self, addr: u64) -> Option<&Site> {
        self.sites.range(..=addr).next_back().map(|(_, (s, _))| s).filter(|s| addr < s.end())
    }

    /// Adds a site found later (not trapped yet); false when it overlaps one already there.
    pub fn insert(&mut self, site: Site) -> bool {
        let overlaps =
            self.site_containing(site.addr).is_some() || self.sites.range(site.addr..site.end()).next().is_some();
        if overlaps {
            return false;
        }
        self.sites.insert(site.addr, (site, false));
        true
    }

    /// Records whether the trap of the site at `addr` is written.
    pub fn set_trapped(&mut self, addr: u64, on: bool) {
        if let Some((_, t)) = self.sites.get_mut(&addr) {
            *t = on;
        }
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.sites.values().map(|(s, _)| s)
    }

    /// The sites whose trap is written.
    pub fn iter_trapped(&self) -> impl Iterator<Item = &Site> {
        self.sites.values().filter(|(_, on)| *on).map(|(s, _)| s)
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
