//! Which L2 events L1 asked to see as VM exits (SDM 26.1 "Instructions That Cause VM Exits",
//! 26.2 "Other Causes of VM Exits").
//!
//! Always exits to L1, whatever the controls (SDM 26.1.2 and 26.2): CPUID, GETSEC, INVD,
//! XSETBV, the VMX instructions (VMCALL, VMCLEAR, VMLAUNCH, VMPTRLD, VMPTRST, VMREAD,
//! VMRESUME, VMWRITE, VMXOFF, VMXON, INVEPT, INVVPID; VMREAD/VMWRITE included because VMCS
//! shadowing is not advertised), triple fault, and VM-entry failures.

use super::caps::proc;
use super::cpu::GuestMemory;
use super::exits::ExitReason;
use super::fields::*;
use super::vmcs::Vmcs;

/// Exit reasons that reach L1 unconditionally (see the module documentation).
pub fn always_exits(reason: ExitReason) -> bool {
    use ExitReason::*;
    matches!(
        reason,
        TRIPLE_FAULT
            | CPUID
            | GETSEC
            | INVD
            | XSETBV
            | VMCALL
            | VMCLEAR
            | VMLAUNCH
            | VMPTRLD
            | VMPTRST
            | VMREAD
            | VMRESUME
            | VMWRITE
            | VMXOFF
            | VMXON
            | INVEPT
            | INVVPID
            | ENTRY_FAIL_GUEST_STATE
            | ENTRY_FAIL_MSR_LOADING
            | ENTRY_FAIL_MACHINE_CHECK
    )
}

fn bitmap_bit(mem: &dyn GuestMemory, addr: u64, bit: u64) -> Option<bool> {
    let mut b = [0u8; 1];
    mem.read_phys(addr.wrapping_add(bit / 8), &mut b).ok()?;
    Some(b[0] & (1 << (bit % 8)) != 0)
}

/// IN/OUT/INS/OUTS of `size` bytes at `port` (SDM 26.1.3, 25.6.4). With "use I/O bitmaps",
/// bitmap A covers ports 0000-7FFF and B 8000-FFFF; the access exits if any byte's bit is
/// set, if it wraps past FFFF, or if the bitmap cannot be read. Otherwise "unconditional I/O
/// exiting" decides.
pub fn l1_wants_io(vmcs: &Vmcs, mem: &dyn GuestMemory, port: u16, size: u8) -> bool {
    let primary = vmcs.get32(CPU_BASED_VM_EXEC_CONTROL);
    if primary & proc::USE_IO_BITMAPS == 0 {
        return primary & proc::UNCOND_IO_EXITING != 0;
    }
    (0..u32::from(size.max(1))).any(|i| {
        let p = u32::from(port) + i;
        if p > 0xffff {
            return true;
        }
        let bitmap = if p < 0x8000 { vmcs.get(IO_BITMAP_A) } else { vmcs.get(IO_BITMAP_B) };
        bitmap_bit(mem, bitmap, u64::from(p & 0x7fff)).unwrap_or(true)
    })
}

/// RDMSR (`write` false) / WRMSR (SDM 26.1.3, 25.6.9). Without "use MSR bitmaps" every
/// access exits; so do MSRs outside 0-1FFF and C0000000-C0001FFF and unreadable bitmaps.
/// Bitmap layout: read-low at 0x000, read-high 0x400, write-low 0x800, write-high 0xc00.
pub fn l1_wants_msr(vmcs: &Vmcs, mem: &dyn GuestMemory, msr: u32, write: bool) -> bool {
    if vmcs.get32(CPU_BASED_VM_EXEC_CONTROL) & proc::USE_MSR_BITMAPS == 0 {
        return true;
    }
    let (offset, bit) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (0x400, msr - 0xc000_0000),
        _ => return true,
    };
    let offset = offset + if write { 0x800 } else { 0 };
    bitmap_bit(mem, vmcs.get(MSR_BITMAP).wrapping_add(offset), u64::from(bit)).unwrap_or(true)
}

/// HLT exits when "HLT exiting" is set (SDM 26.1.3).
pub fn l1_wants_hlt(vmcs: &Vmcs) -> bool {
    vmcs.get32(CPU_BASED_VM_EXEC_CONTROL) & proc::HLT_EXITING != 0
}

/// An exception with `vector` (and error code for #PF) exits per the exception bitmap;
/// for #PF the bitmap bit is inverted when the error code does not match
/// (PFEC & PAGE_FAULT_ERROR_CODE_MASK != PAGE_FAULT_ERROR_CODE_MATCH) (SDM 26.2).
pub fn l1_wants_exception(vmcs: &Vmcs, vector: u8, error_code: u32) -> bool {
    if vector > 31 {
        return false;
    }
    let bit = vmcs.get32(EXCEPTION_BITMAP) & (1 << vector) != 0;
    if vector == 14 {
        let matches = error_code & vmcs.get32(PAGE_FAULT_ERROR_CODE_MASK) == vmcs.get32(PAGE_FAULT_ERROR_CODE_MATCH);
        bit == matches
    } else {
        bit
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::testing::Ram;
    use super::*;

    fn setup(primary: u32) -> (Vmcs, Ram) {
        let mut v = Vmcs::new(1);
        v.set(CPU_BASED_VM_EXEC_CONTROL, u64::from(primary));
        v.set(IO_BITMAP_A, 0x1000);
        v.set(IO_BITMAP_B, 0x2000);
        v.set(MSR_BITMAP, 0x3000);
        (v, Ram(vec![0; 0x4000]))
    }

    #[test]
    fn io() {
        let (v, ram) = setup(0);
        assert!(!l1_wants_io(&v, &ram, 0x3f8, 1));
        let (v, ram) = setup(proc::UNCOND_IO_EXITING);
        assert!(l1_wants_io(&v, &ram, 0x3f8, 1));
        let (v, mut ram) = setup(proc::USE_IO_BITMAPS | proc::UNCOND_IO_EXITING);
        assert!(!l1_wants_io(&v, &ram, 0x3f8, 1));
        ram.0[0x1000 + 0x3f9 / 8] |= 1 << (0x3f9 % 8);
        assert!(!l1_wants_io(&v, &ram, 0x3f8, 1));
        assert!(l1_wants_io(&v, &ram, 0x3f8, 2));
        ram.0[0x2000] |= 1;
        assert!(l1_wants_io(&v, &ram, 0x8000, 1));
        assert!(l1_wants_io(&v, &ram, 0x7fff, 2));
        assert!(!l1_wants_io(&v, &ram, 0xfff0, 4));
        assert!(l1_wants_io(&v, &ram, 0xffff, 2));
        let mut v = v;
        v.set(IO_BITMAP_B, 0x10_0000);
        assert!(l1_wants_io(&v, &ram, 0x9000, 1));
    }

    #[test]
    fn msr() {
        let (v, ram) = setup(0);
        assert!(l1_wants_msr(&v, &ram, 0x10, false));
        let (v, mut ram) = setup(proc::USE_MSR_BITMAPS);
        assert!(!l1_wants_msr(&v, &ram, 0x10, false));
        assert!(l1_wants_msr(&v, &ram, 0x4000_0000, false));
        ram.0[0x3000 + 0x10 / 8] |= 1 << (0x10 % 8);
        assert!(l1_wants_msr(&v, &ram, 0x10, false));
        assert!(!l1_wants_msr(&v, &ram, 0x10, true));
        ram.0[0x3c00 + 0x80 / 8] |= 1 << (0x80 % 8);
        assert!(l1_wants_msr(&v, &ram, 0xc000_0080, true));
        assert!(!l1_wants_msr(&v, &ram, 0xc000_0080, false));
        ram.0[0x3400] |= 1;
        assert!(l1_wants_msr(&v, &ram, 0xc000_0000, false));
        ram.0[0x3800 + 0x1fff / 8] |= 0x80;
        assert!(l1_wants_msr(&v, &ram, 0x1fff, true));
    }

    #[test]
    fn hlt_exceptions_unconditional() {
        let (v, _) = setup(proc::HLT_EXITING);
        assert!(l1_wants_hlt(&v));
        let (mut v, _) = setup(0);
        assert!(!l1_wants_hlt(&v));
        v.set(EXCEPTION_BITMAP, 1 << 14 | 1 << 6);
        assert!(l1_wants_exception(&v, 6, 0));
        assert!(!l1_wants_exception(&v, 13, 0));
        assert!(l1_wants_exception(&v, 14, 2));
        v.set(PAGE_FAULT_ERROR_CODE_MASK, 2);
        v.set(PAGE_FAULT_ERROR_CODE_MATCH, 2);
        assert!(l1_wants_exception(&v, 14, 2));
        assert!(!l1_wants_exception(&v, 14, 0));
        v.set(EXCEPTION_BITMAP, 0);
        assert!(l1_wants_exception(&v, 14, 0));
        assert!(always_exits(ExitReason::VMREAD));
        assert!(always_exits(ExitReason::TRIPLE_FAULT));
        assert!(!always_exits(ExitReason::HLT));
    }
}

/// What the reflect decision needs to know about one L2 exit (SDM 28.2 exit information).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitFacts {
    pub reason: u32,
    pub qualification: u64,
    pub intr_info: u32,
    pub error_code: u32,
    pub msr: u32,
    pub cr_value: u64,
    pub field: u64,
}

/// Whether L1 asked for this L2 event as a VM exit.
pub fn l1_wants_exit(vmcs: &Vmcs, mem: &dyn GuestMemory, f: &ExitFacts) -> bool {
    let Some(reason) = ExitReason::from_u32(f.reason & 0xffff) else { return true };
    match reason {
        ExitReason::IO_INSTRUCTION => {
            l1_wants_io(vmcs, mem, (f.qualification >> 16) as u16, (f.qualification & 7) as u8 + 1)
        }
        ExitReason::RDMSR => l1_wants_msr(vmcs, mem, f.msr, false),
        ExitReason::WRMSR => l1_wants_msr(vmcs, mem, f.msr, true),
        ExitReason::HLT => l1_wants_hlt(vmcs),
        ExitReason::EXCEPTION_NMI => l1_wants_exception(vmcs, f.intr_info as u8, f.error_code),
        ExitReason::EPT_VIOLATION | ExitReason::EPT_MISCONFIG => true,
        r => always_exits(r),
    }
}
