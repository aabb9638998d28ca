//! Turtles all the way down (three levels on one virtual VMX): L1 runs L2, which is a small
//! hypervisor of its own (the same hv library) that launches L3. L1 emulates VMX for L2:
//!
//! - L2's VMCS ("VMCS12") is a shadow VMCS: L1's VMCS for L2 ("VMCS01") has VMCS shadowing on
//!   and its link pointer names it, so L2's VMREADs and VMWRITEs read and write it without a VM
//!   exit (SDM 25.10), except those of the VM-exit information fields, whose VMREAD-bitmap bits
//!   L1 sets: IA32_VMX_MISC bit 29 is not offered, so L1 cannot VMWRITE them into VMCS12 and
//!   serves them itself.
//! - L2's VMXON, VMCLEAR, VMPTRLD, VMLAUNCH, VMRESUME and VMXOFF exit to L1. At L2's VMLAUNCH or
//!   VMRESUME, L1 takes L3's GUEST_RIP and GUEST_RSP from VMCS12 into its own VMCS for L3
//!   ("VMCS02", controls of L1's choosing: every I/O instruction and HLT exits) and enters L3
//!   with L2's general registers.
//! - An exit of L3 is reflected to L2: L1 records the exit information, writes L3's GUEST_RIP
//!   and GUEST_RSP into VMCS12 and resumes L2 at VMCS12's HOST_RIP and HOST_RSP with L3's
//!   general registers, as a VM exit would.
//!
//! L3 executes OUT three times, then HLT; L2 skips each OUT and stops at the HLT. L1 prints how
//! many of L2's VMX instructions reached it and how many VMREADs and VMWRITEs the shadow VMCS
//! served.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

use hv::{ctl, field, reason, Caps, Config, Exit, Page, Stack, Vcpu};
use rt::vmx::{self, GuestRegs, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
/// L1's VMCS for L2.
static VMCS01: Page = Page::new();
/// L1's VMCS for L3.
static VMCS02: Page = Page::new();
/// L2's VMCS for L3 as L1 keeps it: a shadow VMCS in L1's memory.
static VMCS12: Page = Page::new();
/// The VMCS region L2 allocates for L3 (L2 VMCLEARs and VMPTRLDs it; L1 maps it onto VMCS12).
static L2_REGION: Page = Page::new();
static L2_VMXON_REGION: Page = Page::new();
static READ_BITMAP: Page = Page::new();
static WRITE_BITMAP: Page = Page::new();
static L2_STACK: Stack = Stack::new();
static L3_STACK: Stack = Stack::new();

/// L2's outcome: 0 running, 1 passed, 2 failed.
static L2_RESULT: AtomicU32 = AtomicU32::new(0);
/// The OUT exits L2 handled.
static L2_OUTS: AtomicU32 = AtomicU32::new(0);

const PROC2_VMCS_SHADOWING: u32 = 1 << 14;
const VMREAD_BITMAP: u64 = 0x2026;
const VMWRITE_BITMAP: u64 = 0x2028;
const OUTS: u32 = 3;

/// L3: three OUTs, then HLT.
extern "C" fn l3_main() -> ! {
    // SAFETY: port I/O and HLT, each an exit.
    unsafe { asm!("out 0x80, al", "out 0x80, al", "out 0x80, al", "2: hlt", "jmp 2b", options(noreturn)) }
}

/// L2: a hypervisor running L3 on VMCS12.
extern "C" fn l2_main() -> ! {
    let ok = l2_hypervisor().is_ok();
    L2_RESULT.store(if ok { 1 } else { 2 }, Ordering::SeqCst);
    loop {
        // SAFETY: HLT exits to L1, which ends.
        unsafe { asm!("hlt") }
    }
}

fn l2_hypervisor() -> Result<(), VmFail> {
    let caps = l2_caps();
    vmx::vmxon(L2_VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &L2_REGION)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l3_main,
            stack_top: L3_STACK.top(),
            proc: ctl::PROC_UNCOND_IO_EXITING | ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    let mut vcpu = Vcpu::default();
    loop {
        let exit = vcpu.run()?;
        match exit.basic() {
            reason::IO_INSTRUCTION => {
                L2_OUTS.fetch_add(1, Ordering::SeqCst);
                exit.skip()?;
            }
            reason::HLT => break,
            _ => return Err(VmFail::Invalid),
        }
    }
    vmx::vmxoff()
}

/// The capabilities L1 read, without RDMSR.
fn l2_caps() -> Caps {
    // SAFETY: L1 wrote CAPS before launching L2 and does not change it.
    unsafe { CAPS.assume_init() }
}

/// L1's capabilities, for L2's hv library (L2's RDMSRs would exit to L1).
static mut CAPS: core::mem::MaybeUninit<Caps> = core::mem::MaybeUninit::uninit();

fn main(_: &rt::BootInfo) -> u32 {
    // L1 and L2 share this image, with rt's notion of an enlightened VMCS: neither uses one.
    rt::vmx::evmcs::set_allowed(false);
    let caps = Caps::read();
    if caps.proc2.allowed1 & PROC2_VMCS_SHADOWING == 0 {
        rt::println!("VMCS shadowing is not offered");
        return 77;
    }
    // SAFETY: written once, before L2 (the only other reader) runs.
    unsafe { CAPS = core::mem::MaybeUninit::new(caps) };
    match run(&caps) {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction of L1 failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

/// What L1 counted of L2's VMX instructions.
#[derive(Default)]
struct Counts {
    /// VM exits of L2 for a VMX instruction.
    reached: u32,
    /// Of those, VMREADs and VMWRITEs.
    reached_rw: u32,
    /// VMREADs and VMWRITEs L2 executed (its runtime's count, plus vm_run's two VMWRITEs of
    /// HOST_RSP and HOST_RIP per VMLAUNCH/VMRESUME).
    executed_rw: u64,
}

/// The register a VMX-instruction-information register number names (SDM 28.2.5, Table 28-12);
/// RSP is VMCS state, not in `GuestRegs`.
fn gpr(r: &mut GuestRegs, n: u64) -> Option<&mut u64> {
    Some(match n {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        15 => &mut r.r15,
        _ => return None,
    })
}

/// The VM-exit information fields L2 reads, which L1 serves from the last reflected exit.
const EXIT_INFO: [u64; 4] = [
    field::VM_EXIT_REASON,
    field::EXIT_QUALIFICATION,
    field::VM_EXIT_INSTRUCTION_LEN,
    vmx::field::VM_INSTRUCTION_ERROR,
];

fn run(caps: &Caps) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    vmx::enable(VMXON_REGION.addr())?;
    // VMCS02: L1's VMCS for L3 (its entry and stack are VMCS12's, taken at each entry).
    hv::load_vmcs(caps, &VMCS02)?;
    hv::setup_vmcs(
        caps,
        &Config {
            entry: l3_main,
            stack_top: L3_STACK.top(),
            proc: ctl::PROC_UNCOND_IO_EXITING | ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    // VMCS12: a shadow VMCS, cleared, for L2 to VMPTRLD.
    VMCS12.init_region(caps.revision());
    VMCS12.write_u32(0, caps.revision() | 1 << 31);
    vmx::vmclear(VMCS12.addr())?;
    // VMCS01: L2 with shadowing; the exit-information fields' VMREADs exit.
    hv::load_vmcs(caps, &VMCS01)?;
    hv::setup_vmcs(
        caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING,
            proc2: PROC2_VMCS_SHADOWING,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    READ_BITMAP.clear();
    WRITE_BITMAP.clear();
    for f in EXIT_INFO {
        READ_BITMAP.set_bit(f as usize & 0x7fff);
    }
    hv::write(VMREAD_BITMAP, READ_BITMAP.addr())?;
    hv::write(VMWRITE_BITMAP, WRITE_BITMAP.addr())?;
    hv::write(field::VMCS_LINK_POINTER, VMCS12.addr())?;

    let (mut l2, mut l3) = (Vcpu::default(), Vcpu::default());
    let mut counts = Counts::default();
    // The last exit of L3 reflected to L2: reason, qualification, instruction length, error.
    let mut reflected = [0u64; 4];
    let mut l3_exits = 0u32;
    let mut steps = 0;
    let done = loop {
        steps += 1;
        if steps > 200 {
            rt::println!("FAIL more than 200 exits");
            break false;
        }
        // Only L2 runs between the two readings of the count.
        let before = rt::vmx::VMREAD_VMWRITE_COUNT.load(Ordering::SeqCst);
        vmx::vm_run(&mut l2.regs, l2.launched)?;
        counts.executed_rw += rt::vmx::VMREAD_VMWRITE_COUNT.load(Ordering::SeqCst) - before;
        l2.launched = true;
        let exit = Exit::read()?;
        let basic = exit.basic();
        let vmx_insn = matches!(basic, 18..=27 | 50 | 53);
        if vmx_insn {
            counts.reached += 1;
        }
        match basic {
            reason::HLT => break true,
            reason::VMXON | reason::VMCLEAR | reason::VMPTRLD | reason::VMXOFF => {
                // Emulated as VMsucceed: L2's VMCS is VMCS12 whatever pointer it names.
                hv::write(field::GUEST_RFLAGS, 2)?;
                exit.skip()?;
            }
            reason::VMREAD | reason::VMWRITE => {
                counts.reached_rw += 1;
                let info = hv::read(field::VMX_INSTRUCTION_INFO)?;
                let field_reg = info >> 28 & 0xf;
                let enc = gpr(&mut l2.regs, field_reg).map_or(u64::MAX, |r| *r);
                let served = EXIT_INFO.iter().position(|&f| f == enc);
                let (Some(i), true, reason::VMREAD) = (served, info >> 10 & 1 == 1, basic) else {
                    rt::println!("FAIL L2's ", basic, " of field ", Hex(enc), " (information ", Hex(info), ")");
                    break false;
                };
                if let Some(r) = gpr(&mut l2.regs, info >> 3 & 0xf) {
                    *r = reflected[i];
                }
                hv::write(field::GUEST_RFLAGS, 2)?;
                exit.skip()?;
            }
            reason::VMLAUNCH | reason::VMRESUME => {
                counts.executed_rw += 2;
                let l3_exit = enter_l3(&mut l2, &mut l3, basic == reason::VMLAUNCH)?;
                l3_exits += 1;
                reflected = [u64::from(l3_exit.reason), l3_exit.qualification, l3_exit.instruction_len, 0];
            }
            _ => {
                rt::println!("FAIL unexpected exit of L2: ", hv::Seen(&exit));
                break false;
            }
        }
    };
    rt::check!(failures, done, "L2 halted");
    let l2_result = L2_RESULT.load(Ordering::SeqCst);
    rt::check!(failures, l2_result == 1, "L2's hypervisor ran L3 to its HLT and left VMX operation");
    let outs = L2_OUTS.load(Ordering::SeqCst);
    rt::check!(failures, outs == OUTS, "L2 handled L3's OUT exits: ", outs);
    rt::check!(failures, l3_exits == OUTS + 1, "L3 exits reflected to L2: ", l3_exits);
    let served = counts.executed_rw - u64::from(counts.reached_rw);
    rt::println!(
        "L2 executed ",
        counts.executed_rw,
        " VMREADs and VMWRITEs: ",
        counts.reached_rw,
        " reached L1, ",
        served,
        " were served from the shadow VMCS; ",
        counts.reached,
        " of L2's VMX instructions reached L1 in all"
    );
    rt::check!(failures, served * 2 > counts.executed_rw, "most of them never reached L1");
    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-turtles: all checks passed" } else { "vmx-turtles: some checks FAILED" });
    Ok(failures)
}

/// L2's VMLAUNCH or VMRESUME: L3 runs on VMCS02 from VMCS12's guest RIP and RSP with L2's
/// registers; its exit is reflected to L2, which goes on at VMCS12's host RIP and RSP with L3's
/// registers (SDM 28.5: a VM exit loads the host state and leaves the registers).
fn enter_l3(l2: &mut Vcpu, l3: &mut Vcpu, launch: bool) -> Result<Exit, VmFail> {
    vmx::vmptrld(VMCS12.addr())?;
    let (rip, rsp) = (hv::read(field::GUEST_RIP)?, hv::read(field::GUEST_RSP)?);
    let (host_rip, host_rsp) = (hv::read(field::HOST_RIP)?, hv::read(field::HOST_RSP)?);
    vmx::vmptrld(VMCS02.addr())?;
    hv::write(field::GUEST_RIP, rip)?;
    hv::write(field::GUEST_RSP, rsp)?;
    l3.regs = l2.regs;
    if launch {
        l3.launched = false;
    }
    let exit = l3.run()?;
    let l3_rsp = hv::read(field::GUEST_RSP)?;
    vmx::vmptrld(VMCS12.addr())?;
    hv::write(field::GUEST_RIP, exit.rip)?;
    hv::write(field::GUEST_RSP, l3_rsp)?;
    vmx::vmptrld(VMCS01.addr())?;
    hv::write(field::GUEST_RIP, host_rip)?;
    hv::write(field::GUEST_RSP, host_rsp)?;
    hv::write(field::GUEST_RFLAGS, 2)?;
    l2.regs = l3.regs;
    Ok(exit)
}
