//! What the host's KVM does with a VMX instruction, found out once at start-up by a probe VM
//! (for `--patch-sensitive auto`): a real-mode vCPU executes VMXOFF. A host without VMX for
//! its guests that reports the instruction to userspace (an emulation failure with its bytes)
//! traps VMX instructions by itself; a host that raises #UD (stock `kvm_intel` with nested=0,
//! `kvm_amd`) or runs them itself (`kvm_intel` with nested=1) does not.
//!
//! A second probe finds out whether the host runs a guest with paging outside IA-32e mode
//! (CR0.PG = 1, IA32_EFER.LME = 0): when nestbed executes a patched MOV to CR0 itself, it
//! must refuse what the host would (with #GP, as the host does for an unpatched one).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use super::memory::GuestRam;
use crate::error::{host, Error};

/// How the host treats a VMX instruction in a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxTrap {
    /// Reported to userspace: nestbed sees every VMX instruction without patching.
    Reported,
    /// #UD delivered to the guest, or run by the host's own nested VMX: only patched sites
    /// reach nestbed.
    NotReported,
}

/// `NESTBED_SIMULATE_HOST`, a testing aid: `vmx-ud` simulates a host that raises #UD for
/// VMX instructions (the probe answers `NotReported`, and nestbed raises #UD for L1's VMX
/// instructions at unpatched addresses, as `kvm_intel` with nested=0 does).
pub const SIMULATE_HOST_VAR: &str = "NESTBED_SIMULATE_HOST";

/// Whether `NESTBED_SIMULATE_HOST` asks for a host that raises #UD for VMX instructions.
pub fn simulates_vmx_ud() -> Result<bool, Error> {
    match std::env::var(SIMULATE_HOST_VAR) {
        Err(_) => Ok(false),
        Ok(v) if v == "vmx-ud" => Ok(true),
        Ok(v) if v.is_empty() => Ok(false),
        Ok(v) => Err(Error::Config(format!("{SIMULATE_HOST_VAR}={v}: the only simulated host is `vmx-ud`"))),
    }
}

const CODE: u64 = 0x1000;
const UD_HANDLER: u64 = 0x1100;

/// Runs the probe: `vmxoff; out 0x80, al; hlt` at 0x1000, with the #UD vector pointing at
/// `out 0x81, al; hlt`.
pub fn probe_vmx_trap(kvm: &Kvm) -> Result<VmxTrap, Error> {
    // Declared before the VM, so it is dropped after it on every way out.
    let mem = GuestRam::new(2)?;
    let setup =
        |addr: u64, bytes: &[u8]| mem.write(addr, bytes).map_err(|_| Error::HostIo("writing the probe's code".into()));
    // IVT entry 6 (#UD): offset, segment 0.
    setup(6 * 4, &(UD_HANDLER as u16).to_le_bytes())?;
    setup(CODE, &[0x0f, 0x01, 0xc4, 0xe6, 0x80, 0xf4])?;
    setup(UD_HANDLER, &[0xe6, 0x81, 0xf4])?;
    let (_vm, mut vcpu) = probe_vm(kvm, &mem)?;
    start_real_mode(&mut vcpu)?;
    let outcome = match vcpu.run() {
        Ok(VcpuExit::InternalError) => VmxTrap::Reported,
        Ok(_) => VmxTrap::NotReported,
        Err(e) => return Err(Error::Host { what: "KVM_RUN (probe)", source: e }),
    };
    Ok(outcome)
}

/// Runs a protected-mode vCPU with 32-bit paging (one 4-MByte page, SDM 4.3) at `hlt`: the
/// host supports legacy paging when the vCPU halts there.
pub fn probe_legacy_paging(kvm: &Kvm) -> Result<bool, Error> {
    const PAGE_DIR: u64 = 0x2000;
    let mem = GuestRam::new(2)?;
    let setup =
        |addr: u64, bytes: &[u8]| mem.write(addr, bytes).map_err(|_| Error::HostIo("writing the probe's code".into()));
    // PDE 0: present, writable, 4-MByte page at 0.
    setup(PAGE_DIR, &0x83u32.to_le_bytes())?;
    setup(CODE, &[0xf4])?;
    let (_vm, mut vcpu) = probe_vm(kvm, &mem)?;
    let mut sregs = vcpu.get_sregs().map_err(host("KVM_GET_SREGS (probe)"))?;
    let flat = |selector: u16, type_: u8| kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(0x8, 0xb);
    for seg in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss, &mut sregs.fs, &mut sregs.gs] {
        *seg = flat(0x10, 0x3);
    }
    sregs.cr3 = PAGE_DIR;
    sregs.cr4 = 0x10; // PSE
    sregs.cr0 = 0x8000_0011; // PG, ET, PE
    sregs.efer = 0;
    if vcpu.set_sregs(&sregs).is_err() {
        return Ok(false);
    }
    let mut regs = vcpu.get_regs().map_err(host("KVM_GET_REGS (probe)"))?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(host("KVM_SET_REGS (probe)"))?;
    Ok(matches!(vcpu.run(), Ok(VcpuExit::Hlt)))
}

/// The bits of `candidates` that the host's KVM accepts in CR4 of `vcpu`'s 64-bit state, one at
/// a time beside PAE: what an L2 vCPU with the same CPUID table can be given. (This host's KVM
/// refuses some bits whatever CPUID says, e.g. PCIDE, at the next KVM_RUN.) `vcpu` gets its
/// system registers back.
pub fn probe_cr4_bits(vcpu: &VcpuFd, candidates: u64) -> Result<u64, Error> {
    const CR4_PAE: u64 = 1 << 5;
    let saved = vcpu.get_sregs().map_err(host("KVM_GET_SREGS (CR4 probe)"))?;
    let mut s = saved;
    s.cr0 = 0x8001_0011; // PG, WP, ET, PE
    s.efer = 0x500; // LME, LMA
    s.cr3 = 0x1000;
    s.cs.l = 1;
    s.cs.db = 0;
    s.cr4 = CR4_PAE;
    if vcpu.set_sregs(&s).is_err() {
        vcpu.set_sregs(&saved).map_err(host("KVM_SET_SREGS (CR4 probe)"))?;
        return Ok(candidates);
    }
    let mut accepted = candidates & CR4_PAE;
    for bit in (0..64).map(|b| 1u64 << b).filter(|&b| candidates & b != 0 && b != CR4_PAE) {
        s.cr4 = CR4_PAE | bit;
        if vcpu.set_sregs(&s).is_ok() {
            accepted |= bit;
        }
    }
    vcpu.set_sregs(&saved).map_err(host("KVM_SET_SREGS (CR4 probe)"))?;
    Ok(accepted)
}

/// Where the host leaves RIP at a port-I/O exit: past the instruction (`true`) or at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRip {
    pub out_past: bool,
    pub in_past: bool,
}

/// Runs `out 0x80, al; in al, 0x80; hlt` in real mode at 0x1000 and looks at RIP at each I/O
/// exit: nestbed reports an L2 I/O exit at its instruction, which two identical instructions
/// in a row make ambiguous unless it knows this.
pub fn probe_io_rip(kvm: &Kvm) -> Result<IoRip, Error> {
    let mem = GuestRam::new(2)?;
    mem.write(CODE, &[0xe6, 0x80, 0xe4, 0x80, 0xf4]).map_err(|_| Error::HostIo("writing the probe's code".into()))?;
    let (_vm, mut vcpu) = probe_vm(kvm, &mem)?;
    start_real_mode(&mut vcpu)?;
    // The guest's timers may kick this thread meanwhile (the probe runs at L2's first entry):
    // an interrupted KVM_RUN is run again.
    let mut rip_at = |want_out: bool| -> Result<Option<u64>, Error> {
        let out = loop {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(..)) => break true,
                Ok(VcpuExit::IoIn(..)) => break false,
                Ok(VcpuExit::Intr) => continue,
                Ok(_) => return Ok(None),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(Error::Host { what: "KVM_RUN (probe)", source: e }),
            }
        };
        let rip = vcpu.get_regs().map_err(host("KVM_GET_REGS (probe)"))?.rip;
        Ok((out == want_out).then_some(rip))
    };
    let out_rip = rip_at(true)?;
    let in_rip = rip_at(false)?;
    Ok(IoRip { out_past: out_rip == Some(CODE + 2), in_past: in_rip == Some(CODE + 4) })
}

/// A VM with `mem` at guest-physical 0 and one vCPU. The caller declares `mem` before calling,
/// so it is dropped after the VM on every way out.
fn probe_vm(kvm: &Kvm, mem: &GuestRam) -> Result<(VmFd, VcpuFd), Error> {
    let vm = kvm.create_vm().map_err(host("KVM_CREATE_VM (probe)"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: mem.size(),
        userspace_addr: mem.host_base(),
        flags: 0,
    };
    // SAFETY: `mem` is a page-aligned mapping of `mem.size()` bytes that stays mapped while the
    // VM exists (the caller drops it after the VM).
    unsafe { vm.set_user_memory_region(region) }.map_err(host("KVM_SET_USER_MEMORY_REGION (probe)"))?;
    let vcpu = vm.create_vcpu(0).map_err(host("KVM_CREATE_VCPU (probe)"))?;
    Ok((vm, vcpu))
}

/// Real mode with CS = 0, RIP at `CODE` and a stack below it.
fn start_real_mode(vcpu: &mut VcpuFd) -> Result<(), Error> {
    let mut sregs = vcpu.get_sregs().map_err(host("KVM_GET_SREGS (probe)"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(host("KVM_SET_SREGS (probe)"))?;
    let mut regs = vcpu.get_regs().map_err(host("KVM_GET_REGS (probe)"))?;
    regs.rip = CODE;
    regs.rflags = 2;
    regs.rsp = 0x0ff0;
    vcpu.set_regs(&regs).map_err(host("KVM_SET_REGS (probe)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_gives_an_answer_and_ends() {
        let Ok(kvm) = Kvm::new() else { return };
        let answer = probe_vmx_trap(&kvm).expect("the probe runs");
        // Hosts without VMX for their guests (the project's) report VMX instructions.
        if !std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains(" vmx") {
            assert_eq!(answer, VmxTrap::Reported);
        }
    }

    #[test]
    fn the_io_probe_gives_an_answer_and_ends() {
        let Ok(kvm) = Kvm::new() else { return };
        probe_io_rip(&kvm).expect("the probe runs");
    }

    #[test]
    fn the_legacy_paging_probe_gives_an_answer_and_ends() {
        let Ok(kvm) = Kvm::new() else { return };
        let answer = probe_legacy_paging(&kvm).expect("the probe runs");
        // Hardware VMX runs legacy paging; this project's hosts (no VMX for guests) do not.
        if std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains(" vmx") {
            assert!(answer);
        }
    }
}
