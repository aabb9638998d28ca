//! EPT translation (SDM 29.3): walks of L1's EPT paging structures in L1 memory.
//!
//! Only 4-level EPT is supported (IA32_VMX_EPT_VPID_CAP advertises walk length 4), with
//! 4-KByte, 2-MByte and 1-GByte pages, no accessed/dirty flags, no execute-only
//! translations and no mode-based execute control. An entry that cannot be read (outside
//! L1 RAM) counts as a misconfiguration, as all-ones would on real hardware.

use super::caps::{proc, proc2};
use super::cpu::GuestMemory;
use super::fields::{CPU_BASED_VM_EXEC_CONTROL, EPT_POINTER, SECONDARY_VM_EXEC_CONTROL};
use super::vmcs::Vmcs;

/// The EPTP a VM entry with `vmcs` uses: `Some` when "activate secondary controls" and
/// "enable EPT" are both set (SDM 25.6.2, 25.6.11).
pub fn active_eptp(vmcs: &Vmcs) -> Option<u64> {
    let primary = vmcs.get32(CPU_BASED_VM_EXEC_CONTROL);
    let secondary = vmcs.get32(SECONDARY_VM_EXEC_CONTROL);
    (primary & proc::ACTIVATE_SECONDARY_CONTROLS != 0 && secondary & proc2::ENABLE_EPT != 0)
        .then(|| vmcs.get(EPT_POINTER))
}

/// Read/write/execute permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EptPerms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl EptPerms {
    fn from_entry(e: u64) -> Self {
        EptPerms { read: e & 1 != 0, write: e & 2 != 0, exec: e & 4 != 0 }
    }

    fn and(self, o: Self) -> Self {
        EptPerms { read: self.read && o.read, write: self.write && o.write, exec: self.exec && o.exec }
    }

    const ALL: EptPerms = EptPerms { read: true, write: true, exec: true };
}

/// One contiguous run of L2-physical (`gpa`) to L1-physical (`hpa`) memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptMapping {
    pub gpa: u64,
    pub hpa: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// A failed translation: EPT violation (`misconfig` false) or EPT misconfiguration, at
/// `level` (4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptFault {
    pub gpa: u64,
    pub level: u8,
    pub misconfig: bool,
}

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

fn read_entry(mem: &dyn GuestMemory, table: u64, index: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read_phys(table + index * 8, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Misconfiguration of a present entry (SDM 29.3.3.1): write without read, execute-only
/// (not supported), reserved bits (51:N, large-page bit in a PML4E, 7:3 of non-leaf
/// entries, the low address bits of a large page), invalid leaf memory type (2, 3, 7).
fn misconfigured(e: u64, level: u8, leaf: bool, phys_width: u8) -> bool {
    let rwx = e & 7;
    if rwx & 1 == 0 {
        // Present but not readable: write-only, write+execute, or execute-only.
        return true;
    }
    let width = u32::from(phys_width).clamp(12, 52);
    if e & ADDR_MASK & !((1u64 << width) - 1) != 0 {
        return true;
    }
    if !leaf {
        // Bits 7:3 of a non-leaf entry are reserved (bit 7 of a PML4E always).
        return e & 0xf8 != 0 || (level == 4 && e & 0x80 != 0);
    }
    if matches!((e >> 3) & 7, 2 | 3 | 7) {
        return true;
    }
    let low_reserved = match level {
        3 => 0x3fff_f000,
        2 => 0x1f_f000,
        _ => 0,
    };
    e & low_reserved != 0
}

fn is_leaf(e: u64, level: u8) -> bool {
    level == 1 || ((level == 2 || level == 3) && e & 0x80 != 0)
}

fn page_size(level: u8) -> u64 {
    1u64 << (12 + 9 * (u32::from(level) - 1))
}

/// Translates `gpa` through the EPT paging structures rooted at `eptp` bits 51:12, using
/// 52 as the physical-address width for reserved-bit checks. Returns the L1-physical
/// address and the effective permissions (AND over all levels).
pub fn ept_translate(mem: &dyn GuestMemory, eptp: u64, gpa: u64) -> Result<(u64, EptPerms), EptFault> {
    ept_translate_width(mem, eptp, gpa, 52)
}

/// [`ept_translate`] with an explicit physical-address width.
pub fn ept_translate_width(
    mem: &dyn GuestMemory,
    eptp: u64,
    gpa: u64,
    phys_width: u8,
) -> Result<(u64, EptPerms), EptFault> {
    let mut table = eptp & ADDR_MASK;
    let mut perms = EptPerms::ALL;
    if gpa >> 48 != 0 {
        return Err(EptFault { gpa, level: 4, misconfig: false });
    }
    for level in (1..=4u8).rev() {
        let index = (gpa >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
        let Some(e) = read_entry(mem, table, index) else {
            return Err(EptFault { gpa, level, misconfig: true });
        };
        if e & 7 == 0 {
            return Err(EptFault { gpa, level, misconfig: false });
        }
        let leaf = is_leaf(e, level);
        if misconfigured(e, level, leaf, phys_width) {
            return Err(EptFault { gpa, level, misconfig: true });
        }
        perms = perms.and(EptPerms::from_entry(e));
        if leaf {
            let size = page_size(level);
            let hpa = (e & ADDR_MASK & !(size - 1)) | (gpa & (size - 1));
            return Ok((hpa, perms));
        }
        table = e & ADDR_MASK;
    }
    Err(EptFault { gpa, level: 1, misconfig: true })
}

fn push_mapping(out: &mut Vec<EptMapping>, m: EptMapping) {
    if let Some(last) = out.last_mut() {
        if last.gpa + last.size == m.gpa
            && last.hpa.wrapping_add(last.size) == m.hpa
            && (last.read, last.write, last.exec) == (m.read, m.write, m.exec)
        {
            last.size += m.size;
            return;
        }
    }
    out.push(m);
}

/// Appends the runs below `table` to `out`; false once `out` holds more than `max_runs`.
#[allow(clippy::too_many_arguments)]
fn walk(
    mem: &dyn GuestMemory,
    table: u64,
    level: u8,
    base_gpa: u64,
    perms: EptPerms,
    max_gpa: u64,
    max_runs: usize,
    out: &mut Vec<EptMapping>,
) -> bool {
    let size = page_size(level);
    for index in 0..512u64 {
        let gpa = base_gpa + index * size;
        if gpa >= max_gpa {
            break;
        }
        let Some(e) = read_entry(mem, table, index) else {
            continue;
        };
        if e & 7 == 0 {
            continue;
        }
        let leaf = is_leaf(e, level);
        if misconfigured(e, level, leaf, 52) {
            continue;
        }
        let p = perms.and(EptPerms::from_entry(e));
        if leaf {
            let len = size.min(max_gpa - gpa);
            push_mapping(
                out,
                EptMapping {
                    gpa,
                    hpa: e & ADDR_MASK & !(size - 1),
                    size: len,
                    read: p.read,
                    write: p.write,
                    exec: p.exec,
                },
            );
            if out.len() > max_runs {
                return false;
            }
        } else if !walk(mem, e & ADDR_MASK, level - 1, gpa, p, max_gpa, max_runs, out) {
            return false;
        }
    }
    true
}

/// Every translation for L2-physical addresses below `max_gpa`, in ascending `gpa` order,
/// coalesced into maximal runs that are contiguous in both address spaces and have equal
/// permissions. Entries that are not present or misconfigured are holes (an access there
/// is an EPT violation or misconfiguration; classify it with [`ept_translate`]). `Err` when
/// the PML4 table itself cannot be read.
pub fn ept_mappings(mem: &dyn GuestMemory, eptp: u64, max_gpa: u64) -> Result<Vec<EptMapping>, EptFault> {
    ept_mappings_bounded(mem, eptp, max_gpa, usize::MAX).map(Option::unwrap_or_default)
}

/// [`ept_mappings`] that gives up (`Ok(None)`) as soon as there are more than `max_runs`
/// runs, so that tables built to map many scattered pages cannot make the walk unbounded.
pub fn ept_mappings_bounded(
    mem: &dyn GuestMemory,
    eptp: u64,
    max_gpa: u64,
    max_runs: usize,
) -> Result<Option<Vec<EptMapping>>, EptFault> {
    let root = eptp & ADDR_MASK;
    let mut probe = [0u8; 8];
    if mem.read_phys(root, &mut probe).is_err() {
        return Err(EptFault { gpa: 0, level: 4, misconfig: true });
    }
    let mut out = Vec::new();
    let complete = walk(mem, root, 4, 0, EptPerms::ALL, max_gpa.min(1 << 48), max_runs, &mut out);
    Ok(complete.then_some(out))
}

/// Exit qualification for an EPT violation (SDM 28.2.1, Table 28-7): bits 0-2 the access
/// (read, write, instruction fetch), bits 3-5 the permissions of the translation, bit 7
/// guest-linear-address valid, bit 8 (meaningful when bit 7 is set) the access was to the
/// translation of that linear address rather than to a paging structure; nestbed sets it
/// equal to bit 7.
pub fn ept_violation_qualification(read: bool, write: bool, fetch: bool, perms: EptPerms, gla_valid: bool) -> u64 {
    u64::from(read)
        | u64::from(write) << 1
        | u64::from(fetch) << 2
        | u64::from(perms.read) << 3
        | u64::from(perms.write) << 4
        | u64::from(perms.exec) << 5
        | u64::from(gla_valid) << 7
        | u64::from(gla_valid) << 8
}

#[cfg(test)]
mod tests {
    use super::super::cpu::testing::Ram;
    use super::*;

    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;
    const RWX: u64 = 7;
    const WB: u64 = 6 << 3;

    /// PML4[0] -> PDPT; PDPT[0] -> PD; PDPT[1] = 1G page at 0x4000_0000 (RW);
    /// PD[0] -> PT; PD[1] = 2M page at 0x60_0000 (R-X); PT[0..4] = 4K pages at 0x10_0000..
    /// (RWX), PT[4] = write-only (misconfig), PT[5] not present.
    fn tables() -> Ram {
        let mut r = Ram(vec![0; 0x5000]);
        r.put_u64(PML4, PDPT | RWX);
        r.put_u64(PDPT, PD | RWX);
        r.put_u64(PDPT + 8, 0x4000_0000 | 0x80 | WB | 3);
        r.put_u64(PD, PT | RWX);
        r.put_u64(PD + 8, 0x60_0000 | 0x80 | WB | 5);
        for i in 0..4 {
            r.put_u64(PT + 8 * i, (0x10_0000 + 0x1000 * i) | WB | RWX);
        }
        r.put_u64(PT + 8 * 4, 0x20_0000 | WB | 2);
        r
    }

    const EPTP: u64 = PML4 | 6 | 3 << 3;

    #[test]
    fn translate() {
        let r = tables();
        let all = EptPerms { read: true, write: true, exec: true };
        assert_eq!(ept_translate(&r, EPTP, 0x1234), Ok((0x10_1234, all)));
        assert_eq!(ept_translate(&r, EPTP, 0x3fff), Ok((0x10_3fff, all)));
        let rx = EptPerms { read: true, write: false, exec: true };
        assert_eq!(ept_translate(&r, EPTP, 0x20_0000 + 0x12345), Ok((0x61_2345, rx)));
        let rw = EptPerms { read: true, write: true, exec: false };
        assert_eq!(ept_translate(&r, EPTP, 0x4000_0000 + 0x1234_5678), Ok((0x5234_5678, rw)));
        assert_eq!(ept_translate(&r, EPTP, 0x4000), Err(EptFault { gpa: 0x4000, level: 1, misconfig: true }));
        assert_eq!(ept_translate(&r, EPTP, 0x5000), Err(EptFault { gpa: 0x5000, level: 1, misconfig: false }));
        assert_eq!(
            ept_translate(&r, EPTP, 0x8000_0000),
            Err(EptFault { gpa: 0x8000_0000, level: 3, misconfig: false })
        );
        assert_eq!(ept_translate(&r, EPTP, 1 << 39), Err(EptFault { gpa: 1 << 39, level: 4, misconfig: false }));
        // Bad memory type on a leaf, reserved bits in a 2M page, table outside RAM.
        let mut r2 = tables();
        r2.put_u64(PD + 8, 0x60_0000 | 0x80 | 2 << 3 | 5);
        assert!(ept_translate(&r2, EPTP, 0x20_0000).unwrap_err().misconfig);
        r2.put_u64(PD + 8, 0x60_1000 | 0x80 | WB | 5);
        assert!(ept_translate(&r2, EPTP, 0x20_0000).unwrap_err().misconfig);
        r2.put_u64(PD + 8, 0x100_0000 | RWX);
        assert_eq!(ept_translate(&r2, EPTP, 0x20_0000), Err(EptFault { gpa: 0x20_0000, level: 1, misconfig: true }));
        // Permissions are ANDed over levels.
        r2.put_u64(PDPT, PD | 1);
        assert_eq!(ept_translate(&r2, EPTP, 0x1000).unwrap().1, EptPerms { read: true, write: false, exec: false });
        // Physical-address width.
        assert!(ept_translate_width(&r, EPTP, 0x4000_0000, 30).unwrap_err().misconfig);
    }

    #[test]
    fn mappings_coalesce() {
        let r = tables();
        let m = ept_mappings(&r, EPTP, 1 << 32).unwrap();
        assert_eq!(
            m,
            vec![
                EptMapping { gpa: 0, hpa: 0x10_0000, size: 0x4000, read: true, write: true, exec: true },
                EptMapping { gpa: 0x20_0000, hpa: 0x60_0000, size: 0x20_0000, read: true, write: false, exec: true },
                EptMapping {
                    gpa: 0x4000_0000,
                    hpa: 0x4000_0000,
                    size: 0x4000_0000,
                    read: true,
                    write: true,
                    exec: false
                },
            ]
        );
        // max_gpa clips.
        let m = ept_mappings(&r, EPTP, 0x2000).unwrap();
        assert_eq!(m, vec![EptMapping { gpa: 0, hpa: 0x10_0000, size: 0x2000, read: true, write: true, exec: true }]);
        assert!(ept_mappings(&r, 0x100_0000 | 6 | 3 << 3, 1 << 32).is_err());
        // A 2M page right after the 4K run with contiguous hpa merges.
        let mut r2 = tables();
        for i in 0..512 {
            r2.put_u64(PT + 8 * i, (0x20_0000 + 0x1000 * i) | WB | 5);
        }
        r2.put_u64(PD + 8, 0x40_0000 | 0x80 | WB | 5);
        let m = ept_mappings(&r2, EPTP, 0x40_0000).unwrap();
        assert_eq!(
            m,
            vec![EptMapping { gpa: 0, hpa: 0x20_0000, size: 0x40_0000, read: true, write: false, exec: true }]
        );
        // The bounded walk stops past its limit.
        assert_eq!(ept_mappings_bounded(&r, EPTP, 1 << 32, 3).unwrap().map(|m| m.len()), Some(3));
        assert_eq!(ept_mappings_bounded(&r, EPTP, 1 << 32, 2).unwrap(), None);
    }

    #[test]
    fn eptp_needs_both_controls() {
        let mut v = Vmcs::new(1);
        v.set(EPT_POINTER, EPTP);
        v.set(SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::ENABLE_EPT));
        assert_eq!(active_eptp(&v), None);
        v.set(CPU_BASED_VM_EXEC_CONTROL, u64::from(proc::ACTIVATE_SECONDARY_CONTROLS));
        assert_eq!(active_eptp(&v), Some(EPTP));
        v.set(SECONDARY_VM_EXEC_CONTROL, 0);
        assert_eq!(active_eptp(&v), None);
    }

    #[test]
    fn qualification() {
        let p = EptPerms { read: true, write: false, exec: true };
        assert_eq!(ept_violation_qualification(false, true, false, p, true), 0x1aa);
        assert_eq!(ept_violation_qualification(true, false, false, EptPerms::default(), false), 1);
    }
}
