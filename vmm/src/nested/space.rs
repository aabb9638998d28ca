//! L2's guest-physical address space as KVM memslots of the L2 VM: identity onto L1 RAM
//! without EPT, or following L1's EPT paging structures (SDM 29.3) with one memslot per run of
//! [`ept_mappings`]. Runs the EPT makes read-only become `KVM_MEM_READONLY` slots; holes stay
//! unmapped. L2's accesses that the slots do not allow reach userspace as MMIO exits, which
//! the runner turns into EPT violations (or misconfigurations) for L1.
//!
//! The memslots act as L2's TLB for guest-physical translations (SDM 29.4): they are rebuilt
//! at VM entry when the EPTP changed, after INVEPT, VMXON/VMXOFF or a VMWRITE of EPT_POINTER,
//! and when an exit showed that L1's tables now allow an access the slots do not.
//!
//! Approximations: execute permission is not enforced (a memslot cannot deny instruction
//! fetches while allowing reads), so readable runs without execute access are mapped like the
//! others; execute-only and write-only entries are misconfigurations in nestbed's EPT (SDM
//! 29.3.3.1, no execute-only support advertised), so every mapped run is readable. Runs onto
//! L1-physical addresses outside L1 RAM are left unmapped (there is nothing there; the runner
//! answers such accesses as unbacked memory). Memory types are ignored.

use crate::error::Error;
use crate::machine::memory::MemFault;
use crate::machine::paging::PhysMem;
use crate::machine::{GuestRam, Vm};
use crate::nested::env::RamView;
use crate::vmx::ept::{ept_mappings_bounded, EptMapping};

/// Most memslots an EPT layout may take. KVM allows far more (32764 on our hosts), but each
/// memslot change is a costly ioctl and L1s map their RAM with a few large runs.
pub const MAX_REGIONS: usize = 1024;
/// Most runs an EPT walk may find before clipping to RAM (runs outside RAM need no memslot).
pub const MAX_RUNS: usize = 16 * MAX_REGIONS;

/// One memslot: L2-physical `gpa..gpa+size` onto L1-physical `l1..l1+size`, inside L1 RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region {
    pub gpa: u64,
    pub size: u64,
    pub l1: u64,
    pub readonly: bool,
}

impl Region {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.size
    }
}

/// What L2's guest-physical addresses mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// L2-physical = L1-physical ("enable EPT" clear).
    Identity,
    /// Translated through the EPT paging structures this EPTP points at.
    Ept(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "L1's EPT maps {runs} or more separate runs of memory; nestbed gives L2 at most {max} memslots (map L2's memory with fewer, larger runs)"
    )]
    TooManyRuns { runs: usize, max: usize },
}

/// The identity layout over `ram_size` bytes of L1 RAM.
pub fn identity(ram_size: u64) -> Vec<Region> {
    vec![Region { gpa: 0, size: ram_size, l1: 0, readonly: false }]
}

/// Memslots for the runs of an EPT walk: each run clipped to L1 RAM, read-only where the
/// EPT denies writes, dropped where it denies reads. Input in ascending `gpa` order (as
/// [`ept_mappings`] gives it) gives output in the same order.
pub fn regions(mappings: &[EptMapping], ram_size: u64, max: usize) -> Result<Vec<Region>, LayoutError> {
    let mut out: Vec<Region> = Vec::new();
    for m in mappings.iter().filter(|m| m.read && m.hpa < ram_size) {
        let size = m.size.min(ram_size - m.hpa);
        let r = Region { gpa: m.gpa, size, l1: m.hpa, readonly: !m.write };
        if let Some(last) = out.last_mut() {
            if last.gpa + last.size == r.gpa && last.l1 + last.size == r.l1 && last.readonly == r.readonly {
                last.size += r.size;
                continue;
            }
        }
        out.push(r);
    }
    if out.len() > max {
        return Err(LayoutError::TooManyRuns { runs: out.len(), max });
    }
    Ok(out)
}

/// The memslot changes from `current` (slot id, region) to `want`: slots to delete, then
/// regions to add. Regions present in both stay untouched.
pub fn diff(current: &[(u32, Region)], want: &[Region]) -> (Vec<u32>, Vec<Region>) {
    let mut have: Vec<Region> = current.iter().map(|&(_, r)| r).collect();
    have.sort_unstable();
    let mut wanted: Vec<Region> = want.to_vec();
    wanted.sort_unstable();
    let remove = current.iter().filter(|(_, r)| wanted.binary_search(r).is_err()).map(|&(s, _)| s).collect();
    let add = want.iter().filter(|r| have.binary_search(r).is_err()).copied().collect();
    (remove, add)
}

/// Why [`AddressSpace::sync`] could not follow L1's EPT.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Host(#[from] Error),
}

/// The L2 VM's memslots and what they were built from.
#[derive(Debug)]
pub struct AddressSpace {
    source: Source,
    /// (memslot id, region), sorted by `gpa`.
    slots: Vec<(u32, Region)>,
    free: Vec<u32>,
    next_slot: u32,
    stale: bool,
}

impl AddressSpace {
    /// The layout `Vm::new` creates: memslot 0 maps all of L1 RAM one to one.
    pub fn new(ram_size: u64) -> Self {
        let slots = identity(ram_size).into_iter().map(|r| (0, r)).collect();
        AddressSpace { source: Source::Identity, slots, free: Vec::new(), next_slot: 1, stale: false }
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// The EPTP the memslots follow, if any.
    pub fn eptp(&self) -> Option<u64> {
        match self.source {
            Source::Ept(p) => Some(p),
            Source::Identity => None,
        }
    }

    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.slots.iter().map(|(_, r)| r)
    }

    /// Drops the cached translations: the next [`sync`](Self::sync) walks L1's tables again.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// INVEPT (SDM 31): single-context for `Some(eptp)` (only translations derived from that
    /// EPTP's EPT PML4 address), all-context for `None`.
    pub fn invept(&mut self, eptp: Option<u64>) {
        const EP4TA: u64 = 0x000f_ffff_ffff_f000;
        match (eptp, self.source) {
            (Some(p), Source::Ept(cur)) if p & EP4TA != cur & EP4TA => {}
            _ => self.invalidate(),
        }
    }

    /// Makes the memslots follow `source`; walks the EPT only when the source changed or the
    /// layout was invalidated. Returns whether memslots changed. After an error the layout is
    /// stale (some memslots may be gone) and the next call starts over.
    pub fn sync(&mut self, vm: &Vm, ram: &GuestRam, source: Source, max_gpa: u64) -> Result<bool, SyncError> {
        if source == self.source && !self.stale {
            return Ok(false);
        }
        self.stale = true;
        let want = match source {
            Source::Identity => identity(ram.size()),
            // An EPT PML4 table outside RAM reads as all ones: every access is a misconfiguration,
            // nothing is mapped.
            Source::Ept(eptp) => match ept_mappings_bounded(&RamView(ram), eptp, max_gpa, MAX_RUNS) {
                Ok(Some(runs)) => regions(&runs, ram.size(), MAX_REGIONS)?,
                Ok(None) => return Err(LayoutError::TooManyRuns { runs: MAX_RUNS + 1, max: MAX_REGIONS }.into()),
                Err(_) => Vec::new(),
            },
        };
        let (remove, add) = diff(&self.slots, &want);
        let changed = !remove.is_empty() || !add.is_empty();
        // KVM refuses overlapping memslots: delete before adding.
        for slot in remove {
            vm.remove_slot(slot)?;
            self.slots.retain(|&(s, _)| s != slot);
            self.free.push(slot);
        }
        for r in add {
            let slot = self.free.pop().unwrap_or_else(|| {
                self.next_slot += 1;
                self.next_slot - 1
            });
            if let Err(e) = vm.set_slot(slot, r.gpa, r.size, ram.host_base() + r.l1, r.readonly) {
                self.free.push(slot);
                return Err(e.into());
            }
            self.slots.push((slot, r));
        }
        self.slots.sort_unstable_by_key(|&(_, r)| r.gpa);
        self.source = source;
        self.stale = false;
        Ok(changed)
    }

    /// The region mapping L2-physical `gpa`.
    pub fn lookup(&self, gpa: u64) -> Option<&Region> {
        let i = self.slots.partition_point(|(_, r)| r.gpa <= gpa);
        let (_, r) = self.slots.get(i.checked_sub(1)?)?;
        r.contains(gpa).then_some(r)
    }
}

/// L2-physical memory as L2 sees it through the memslots (for walking L2's page tables and
/// reading its instructions).
pub struct L2Memory<'a> {
    pub ram: &'a GuestRam,
    pub space: &'a AddressSpace,
}

impl L2Memory<'_> {
    /// L1-physical address of L2-physical `gpa..gpa+len`, when one region maps it all.
    fn to_l1(&self, gpa: u64, len: usize, write: bool) -> Result<u64, MemFault> {
        let fault = MemFault { gpa, len };
        let r = self.space.lookup(gpa).ok_or(fault)?;
        let end = gpa.checked_add(len as u64).ok_or(fault)?;
        if end - r.gpa > r.size || (write && r.readonly) {
            return Err(fault);
        }
        Ok(r.l1 + (gpa - r.gpa))
    }
}

impl PhysMem for L2Memory<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let l1 = self.to_l1(gpa, buf.len(), false)?;
        self.ram.read(l1, buf)
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        let l1 = self.to_l1(gpa, buf.len(), true)?;
        self.ram.write(l1, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(gpa: u64, hpa: u64, size: u64, write: bool) -> EptMapping {
        EptMapping { gpa, hpa, size, read: true, write, exec: true }
    }

    fn r(gpa: u64, l1: u64, size: u64, readonly: bool) -> Region {
        Region { gpa, size, l1, readonly }
    }

    #[test]
    fn regions_clip_to_ram_and_mark_readonly() {
        let ram = 0x800_0000;
        let maps = [
            m(0, 0, 0x20_0000, true),
            m(0x40_0000, 0x10_0000, 0x1000, false),
            // A 1-GByte page onto L1-physical 0: only RAM's worth is backed.
            m(0x4000_0000, 0, 0x4000_0000, true),
            // Entirely outside RAM.
            m(0x8000_0000, 0x4000_0000, 0x20_0000, true),
            EptMapping { read: false, ..m(0x9000_0000, 0, 0x1000, false) },
        ];
        let got = regions(&maps, ram, 16).unwrap();
        assert_eq!(
            got,
            vec![r(0, 0, 0x20_0000, false), r(0x40_0000, 0x10_0000, 0x1000, true), r(0x4000_0000, 0, ram, false)]
        );
        // A run that ends past RAM is cut at its end.
        let got = regions(&[m(0x1000, ram - 0x1000, 0x20_0000, true)], ram, 16).unwrap();
        assert_eq!(got, vec![r(0x1000, ram - 0x1000, 0x1000, false)]);
    }

    #[test]
    fn regions_merge_after_clipping_and_respect_the_limit() {
        // Write permission differs in the EPT (RWX vs RW), not in the memslots: one region.
        let maps = [m(0, 0, 0x1000, true), EptMapping { exec: false, ..m(0x1000, 0x1000, 0x1000, true) }];
        assert_eq!(regions(&maps, 1 << 30, 16).unwrap(), vec![r(0, 0, 0x2000, false)]);
        let many: Vec<EptMapping> = (0..10).map(|i| m(i * 0x2000, i * 0x2000, 0x1000, true)).collect();
        assert_eq!(regions(&many, 1 << 30, 10).unwrap().len(), 10);
        assert_eq!(regions(&many, 1 << 30, 9), Err(LayoutError::TooManyRuns { runs: 10, max: 9 }));
    }

    #[test]
    fn diff_keeps_identical_regions() {
        let cur = [
            (0, r(0, 0, 0x10_0000, false)),
            (3, r(0x20_0000, 0x1000, 0x1000, true)),
            (5, r(0x30_0000, 0, 0x1000, false)),
        ];
        let want = [r(0, 0, 0x10_0000, false), r(0x20_0000, 0x1000, 0x1000, false), r(0x40_0000, 0, 0x1000, false)];
        let (remove, add) = diff(&cur, &want);
        assert_eq!(remove, vec![3, 5]);
        assert_eq!(add, vec![r(0x20_0000, 0x1000, 0x1000, false), r(0x40_0000, 0, 0x1000, false)]);
        assert_eq!(diff(&cur, &cur.map(|(_, r)| r)), (vec![], vec![]));
        assert_eq!(diff(&[], &want).1.len(), 3);
        assert_eq!(diff(&cur, &[]).0, vec![0, 3, 5]);
    }

    #[test]
    fn lookup_and_invept_scope() {
        let mut s = AddressSpace::new(0x100_0000);
        s.slots = vec![(1, r(0x1000, 0x5000, 0x2000, false)), (2, r(0x10_0000, 0, 0x1000, true))];
        s.source = Source::Ept(0x7000 | 0x1e);
        assert_eq!(s.lookup(0xfff), None);
        assert_eq!(s.lookup(0x1000).map(|r| r.l1), Some(0x5000));
        assert_eq!(s.lookup(0x2fff).map(|r| r.l1), Some(0x5000));
        assert_eq!(s.lookup(0x3000), None);
        assert!(s.lookup(0x10_0000).unwrap().readonly);
        assert_eq!(s.lookup(u64::MAX), None);
        s.invept(Some(0x8000 | 0x1e));
        assert!(!s.stale);
        s.invept(Some(0x7000 | 0x18));
        assert!(s.stale);
        s.stale = false;
        s.invept(None);
        assert!(s.stale);
    }

    #[test]
    fn l2_memory_reads_through_regions() {
        let ram = GuestRam::new(2).unwrap();
        ram.write(0x5010, &0xfeed_u64.to_le_bytes()).unwrap();
        let mut s = AddressSpace::new(ram.size());
        s.slots = vec![(1, r(0x1000, 0x5000, 0x1000, true))];
        let mem = L2Memory { ram: &ram, space: &s };
        let mut b = [0u8; 8];
        mem.read_phys(0x1010, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0xfeed);
        assert!(mem.read_phys(0x1ffc, &mut b).is_err());
        assert!(mem.read_phys(0x10, &mut b).is_err());
        assert!(mem.write_phys(0x1010, &b).is_err());
    }
}
