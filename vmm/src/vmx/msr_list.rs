//! The MSR areas of VM entries and exits (SDM 25.7.2, 25.8.2): the VM-entry MSR-load area,
//! loaded after the guest state (SDM 27.4); the VM-exit MSR-store area, saved after the guest
//! state (28.4); the VM-exit MSR-load area, loaded after the host state (28.6). Each entry is
//! 16 bytes (SDM 25.7.2): MSR index in bits 31:0, reserved bits 63:32, data in bits 127:64.
//!
//! This module reads an area and applies the failure rules the SDM states for every
//! processor; whether the MSR itself can be read or written (the "#GP if executed via
//! RDMSR/WRMSR" rule) is the host's to say, and the glue asks it.

use std::fmt;

use super::caps::VmxCaps;
use super::cpu::GuestMemory;
use super::fields::{
    VM_ENTRY_MSR_LOAD_ADDR, VM_ENTRY_MSR_LOAD_COUNT, VM_EXIT_MSR_LOAD_ADDR, VM_EXIT_MSR_LOAD_COUNT,
    VM_EXIT_MSR_STORE_ADDR, VM_EXIT_MSR_STORE_COUNT,
};
use super::vmcs::Vmcs;

pub const ENTRY_SIZE: u64 = 16;

pub const IA32_TSC: u32 = 0x10;
pub const IA32_SMM_MONITOR_CTL: u32 = 0x9b;
pub const IA32_SMBASE: u32 = 0x9e;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;

/// One entry of an MSR area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsrEntry {
    pub index: u32,
    pub reserved: u32,
    pub data: u64,
}

impl MsrEntry {
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut d = [0u8; 8];
        d.copy_from_slice(&b[8..]);
        MsrEntry { index: u32_at(0), reserved: u32_at(4), data: u64::from_le_bytes(d) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrArea {
    EntryLoad,
    ExitStore,
    ExitLoad,
}

impl MsrArea {
    /// The (address, count) fields of the area.
    pub fn fields(self) -> (u32, u32) {
        match self {
            MsrArea::EntryLoad => (VM_ENTRY_MSR_LOAD_ADDR, VM_ENTRY_MSR_LOAD_COUNT),
            MsrArea::ExitStore => (VM_EXIT_MSR_STORE_ADDR, VM_EXIT_MSR_STORE_COUNT),
            MsrArea::ExitLoad => (VM_EXIT_MSR_LOAD_ADDR, VM_EXIT_MSR_LOAD_COUNT),
        }
    }

    pub fn count(self, vmcs: &Vmcs) -> u32 {
        vmcs.get32(self.fields().1)
    }

    pub fn sdm(self) -> &'static str {
        match self {
            MsrArea::EntryLoad => "27.4",
            MsrArea::ExitStore => "28.4",
            MsrArea::ExitLoad => "28.6",
        }
    }

    fn loads(self) -> bool {
        self != MsrArea::ExitStore
    }
}

impl fmt::Display for MsrArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MsrArea::EntryLoad => "VM-entry MSR-load",
            MsrArea::ExitStore => "VM-exit MSR-store",
            MsrArea::ExitLoad => "VM-exit MSR-load",
        })
    }
}

/// Why processing of an entry fails, by the rules of SDM 27.4, 28.4 and 28.6 that do not
/// depend on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFault {
    /// IA32_FS_BASE or IA32_GS_BASE in a load area.
    FsGsBase,
    /// Bits 31:8 are 000008H: an MSR of the x2APIC.
    X2Apic,
    /// IA32_SMM_MONITOR_CTL is written only in SMM; IA32_SMBASE is read only in SMM (and
    /// never written by WRMSR).
    SmmOnly,
    /// Bits 63:32 of the entry are not 0.
    Reserved,
    /// An MSR of nestbed's VMX that WRMSR would #GP on: IA32_FEATURE_CONTROL (locked) or a
    /// VMX capability MSR (read-only).
    ReadOnly,
    /// Beyond the recommended maximum of IA32_VMX_MISC bits 27:25. The SDM leaves the
    /// behaviour undefined; nestbed fails the entry there, as KVM does.
    BeyondMaximum,
    /// Another MSR the host refuses to write or read.
    Refused,
}

impl fmt::Display for EntryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryFault::FsGsBase => "IA32_FS_BASE and IA32_GS_BASE cannot be loaded from an MSR area",
            EntryFault::X2Apic => "x2APIC MSRs (800H-8FFH) are not allowed in an MSR area",
            EntryFault::SmmOnly => "the MSR is accessible in SMM only",
            EntryFault::Reserved => "bits 63:32 of the entry are not 0",
            EntryFault::ReadOnly => "WRMSR of the MSR would #GP (locked or read-only)",
            EntryFault::BeyondMaximum => "the entry is beyond the maximum of IA32_VMX_MISC bits 27:25",
            EntryFault::Refused => "the host refuses the MSR (RDMSR/WRMSR would #GP)",
        })
    }
}

/// The recommended maximum number of entries per area: 512 * (N + 1) with N in bits 27:25
/// of IA32_VMX_MISC (SDM A.6).
pub fn max_entries(misc: u64) -> u32 {
    512 * (((misc >> 25) & 7) as u32 + 1)
}

/// The rules of SDM 27.4 (entry loads), 28.4 (exit stores) and 28.6 (exit loads) that every
/// processor applies, before the MSR is accessed.
pub fn check_entry(area: MsrArea, e: &MsrEntry, caps: &VmxCaps) -> Result<(), EntryFault> {
    if e.reserved != 0 {
        return Err(EntryFault::Reserved);
    }
    if e.index >> 8 == 0x8 {
        return Err(EntryFault::X2Apic);
    }
    if e.index == IA32_SMBASE {
        return Err(EntryFault::SmmOnly);
    }
    if area.loads() {
        if e.index == IA32_FS_BASE || e.index == IA32_GS_BASE {
            return Err(EntryFault::FsGsBase);
        }
        if e.index == IA32_SMM_MONITOR_CTL {
            return Err(EntryFault::SmmOnly);
        }
        if caps.msr(e.index).is_some() {
            return Err(EntryFault::ReadOnly);
        }
    }
    Ok(())
}

/// An area as read from memory: its entries in order up to the first one that fails
/// [`check_entry`] (or the maximum), and that failure with its 0-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaRead {
    pub addr: u64,
    pub entries: Vec<MsrEntry>,
    pub fault: Option<(usize, EntryFault)>,
}

impl AreaRead {
    /// The 1-based number of the entry that failed, as the exit qualification of a VM-entry
    /// failure due to MSR loading reports it (SDM 27.8).
    pub fn failed_entry(&self) -> Option<u64> {
        self.fault.map(|(i, _)| i as u64 + 1)
    }
}

/// Reads the area of the current VMCS. Memory outside RAM reads as all ones (no device
/// answers there), which fails the reserved-bits rule.
pub fn read_area(vmcs: &Vmcs, area: MsrArea, mem: &dyn GuestMemory, caps: &VmxCaps) -> AreaRead {
    let (addr_field, _) = area.fields();
    let addr = vmcs.get(addr_field);
    let count = area.count(vmcs) as usize;
    let max = max_entries(caps.misc) as usize;
    let mut entries = Vec::with_capacity(count.min(max));
    for i in 0..count {
        if i >= max {
            return AreaRead { addr, entries, fault: Some((i, EntryFault::BeyondMaximum)) };
        }
        let mut b = [0xffu8; 16];
        if mem.read_phys(addr.wrapping_add(i as u64 * ENTRY_SIZE), &mut b).is_err() {
            b = [0xff; 16];
        }
        let e = MsrEntry::from_bytes(&b);
        if let Err(f) = check_entry(area, &e, caps) {
            return AreaRead { addr, entries, fault: Some((i, f)) };
        }
        entries.push(e);
    }
    AreaRead { addr, entries, fault: None }
}

/// Stores `value` into the data of entry `i` of the area at `addr` (SDM 28.4: bits 127:64).
/// Outside RAM the store goes nowhere.
pub fn store_value(mem: &mut dyn GuestMemory, addr: u64, i: usize, value: u64) {
    let _ = mem.write_phys(addr.wrapping_add(i as u64 * ENTRY_SIZE + 8), &value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::cpu::testing::Ram;
    use super::*;

    const AREA: u64 = 0x1000;

    fn put(ram: &mut Ram, i: u64, index: u32, reserved: u32, data: u64) {
        ram.put_u32(AREA + 16 * i, index);
        ram.put_u32(AREA + 16 * i + 4, reserved);
        ram.put_u64(AREA + 16 * i + 8, data);
    }

    fn vmcs(area: MsrArea, addr: u64, count: u64) -> Vmcs {
        let mut v = Vmcs::new(1);
        let (a, c) = area.fields();
        v.set(a, addr);
        v.set(c, count);
        v
    }

    #[test]
    fn entries_in_order_until_the_first_failure() {
        let caps = VmxCaps::default();
        let mut ram = Ram(vec![0; 0x4000]);
        put(&mut ram, 0, 0xc000_0102, 0, 0x3141_5926);
        put(&mut ram, 1, 0x175, 0, 0x8000);
        put(&mut ram, 2, IA32_FS_BASE, 0, 1);
        put(&mut ram, 3, 0x174, 0, 8);
        let r = read_area(&vmcs(MsrArea::EntryLoad, AREA, 4), MsrArea::EntryLoad, &ram, &caps);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0], MsrEntry { index: 0xc000_0102, reserved: 0, data: 0x3141_5926 });
        assert_eq!(r.entries[1].data, 0x8000);
        assert_eq!(r.fault, Some((2, EntryFault::FsGsBase)));
        assert_eq!(r.failed_entry(), Some(3));
        // A count of 2 stops before the bad entry; 0 reads nothing.
        let r = read_area(&vmcs(MsrArea::EntryLoad, AREA, 2), MsrArea::EntryLoad, &ram, &caps);
        assert_eq!((r.entries.len(), r.fault), (2, None));
        let r = read_area(&vmcs(MsrArea::EntryLoad, AREA, 0), MsrArea::EntryLoad, &ram, &caps);
        assert_eq!((r.entries.len(), r.fault), (0, None));
        // FS_BASE may be stored (SDM 28.4 has no such rule).
        let r = read_area(&vmcs(MsrArea::ExitStore, AREA, 4), MsrArea::ExitStore, &ram, &caps);
        assert_eq!((r.entries.len(), r.fault), (4, None));
    }

    #[test]
    fn sdm_failure_rules() {
        let caps = VmxCaps::default();
        let e = |index, reserved| MsrEntry { index, reserved, data: 0 };
        use MsrArea::*;
        for area in [EntryLoad, ExitLoad] {
            for (index, fault) in [
                (IA32_FS_BASE, EntryFault::FsGsBase),
                (IA32_GS_BASE, EntryFault::FsGsBase),
                (0x800, EntryFault::X2Apic),
                (0x808, EntryFault::X2Apic),
                (0x8ff, EntryFault::X2Apic),
                (IA32_SMM_MONITOR_CTL, EntryFault::SmmOnly),
                (IA32_SMBASE, EntryFault::SmmOnly),
                (0x3a, EntryFault::ReadOnly),
                (0x480, EntryFault::ReadOnly),
                (0x491, EntryFault::ReadOnly),
            ] {
                assert_eq!(check_entry(area, &e(index, 0), &caps), Err(fault), "{area} {index:#x}");
            }
            assert_eq!(check_entry(area, &e(0xc000_0102, 1), &caps), Err(EntryFault::Reserved));
            for index in [0x7ff, 0x900, IA32_TSC, 0x174, 0x277, 0x1d9, 0xc000_0080, 0xc000_0102, 0x1234_5678] {
                assert_eq!(check_entry(area, &e(index, 0), &caps), Ok(()), "{area} {index:#x}");
            }
        }
        for (index, want) in [
            (0x808, Err(EntryFault::X2Apic)),
            (IA32_SMBASE, Err(EntryFault::SmmOnly)),
            (IA32_FS_BASE, Ok(())),
            (IA32_SMM_MONITOR_CTL, Ok(())),
            (0x480, Ok(())),
        ] {
            assert_eq!(check_entry(ExitStore, &e(index, 0), &caps), want, "{index:#x}");
        }
        assert_eq!(check_entry(ExitStore, &e(0x10, 0x8000_0000), &caps), Err(EntryFault::Reserved));
    }

    #[test]
    fn maximum_from_vmx_misc() {
        assert_eq!(max_entries(0), 512);
        assert_eq!(max_entries(VmxCaps::default().misc), 512);
        assert_eq!(max_entries(7 << 25), 4096);
        assert_eq!(max_entries(1 << 25 | 0x1f), 1024);
        let caps = VmxCaps::default();
        let mut ram = Ram(vec![0; 0x4000]);
        for i in 0..513 {
            put(&mut ram, i, IA32_TSC, 0, i);
        }
        let r = read_area(&vmcs(MsrArea::EntryLoad, AREA, 513), MsrArea::EntryLoad, &ram, &caps);
        assert_eq!(r.entries.len(), 512);
        assert_eq!(r.fault, Some((512, EntryFault::BeyondMaximum)));
        assert_eq!(r.failed_entry(), Some(513));
        let r = read_area(&vmcs(MsrArea::ExitStore, AREA, 512), MsrArea::ExitStore, &ram, &caps);
        assert_eq!((r.entries.len(), r.fault), (512, None));
    }

    #[test]
    fn outside_ram_reads_as_all_ones_and_stores_go_nowhere() {
        let caps = VmxCaps::default();
        let mut ram = Ram(vec![0; 0x2000]);
        put(&mut ram, 0, 0x174, 0, 1);
        // The second entry lies past the end of RAM.
        let r = read_area(&vmcs(MsrArea::ExitLoad, 0x1ff0, 2), MsrArea::ExitLoad, &ram, &caps);
        assert_eq!(r.fault, Some((1, EntryFault::Reserved)));
        store_value(&mut ram, AREA, 0, 0xdead_beef);
        assert_eq!(ram.u64_at(AREA + 8), 0xdead_beef);
        assert_eq!(ram.u32_at(AREA), 0x174, "the index stays");
        store_value(&mut ram, 0x1ff0, 1, 1);
    }
}
