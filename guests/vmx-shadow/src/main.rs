//! VMCS shadowing (SDM 25.10, 25.6.15, 26.1.3): an L1 hypervisor gives its L2 a shadow VMCS.
//!
//! - In VMX root operation a shadow VMCS (bit 31 of its revision word) can be made current,
//!   read and written, but not entered: VMLAUNCH and VMRESUME fail with VMfailInvalid.
//! - L2 executes a table of VMREADs and VMWRITEs. Those whose bit in the VMREAD or VMWRITE
//!   bitmap is 0 read and write the shadow VMCS without a VM exit; the others, and every field
//!   encoding with bits 63:15 set, exit to L1 with reasons 23 and 25, and L1 emulates them.
//!   A VMfailValid of L2's VMREAD/VMWRITE stores its error in L1's ordinary VMCS.
//! - A VMCS link pointer that is not a shadow VMCS (the current VMCS, an ordinary VMCS, memory
//!   outside RAM, a misaligned address) fails VM entry with reason 33 and qualification 4.
//! - A VMREAD bitmap in the last page of RAM works; one past the end of RAM reads as all ones:
//!   every VMREAD exits.
//!
//! It prints how many of L2's VMX instructions reached L1 and how many the shadow VMCS served.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{field, reason, Caps, Config, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static SHADOW: Page = Page::new();
/// An ordinary VMCS region: no valid link pointer while shadowing is on.
static ORDINARY: Page = Page::new();
static READ_BITMAP: Page = Page::new();
static WRITE_BITMAP: Page = Page::new();
static L2_STACK: Stack = Stack::new();
/// What L2 saw: per step, the value and RFLAGS after the instruction; at 0x800, a memory
/// destination.
static RESULTS: Page = Page::new();

/// Exit status where the CPU does not offer VMCS shadowing.
const NOT_OFFERED: u32 = 77;
const PROC2_VMCS_SHADOWING: u32 = 1 << 14;
const VMREAD_BITMAP: u64 = 0x2026;
const VMWRITE_BITMAP: u64 = 0x2028;
const GUEST_CS_SELECTOR: u64 = 0x0802;
const TSC_OFFSET: u64 = 0x2010;
const VM_INSTRUCTION_ERROR: u64 = 0x4400;
const VM_EXIT_REASON: u64 = 0x4402;
const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_ZF: u64 = 1 << 6;
/// IA32_VMX_MISC bit 29: VMWRITE may write read-only fields (SDM A.6).
const MISC_VMWRITE_ANY: u64 = 1 << 29;
/// Exit qualification of a VM-entry failure for the VMCS link pointer (SDM 27.8).
const QUAL_VMCS_LINK_POINTER: u64 = 4;
/// What L1 hands back for a VMREAD it emulates (bits 15:0: the field).
const FROM_L1: u64 = 0x4c31_0000_0000_0000;
/// Where L2's memory-operand VMREAD stores.
const MEM_RESULT: usize = 0x800;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write(u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// VMsucceed with this value (VMREAD) or 0 (VMWRITE).
    Value(u64),
    /// VMfailValid.
    FailValid,
}

struct Step {
    what: &'static str,
    op: Op,
    field: u64,
    /// A VM exit to L1 (the bitmap bit is 1, or bits 63:15 are not 0).
    exits: bool,
    want: Want,
}

const fn step(what: &'static str, op: Op, field: u64, exits: bool, want: Want) -> Step {
    Step { what, op, field, exits, want }
}

const STEPS: [Step; 12] = [
    step("VMREAD GUEST_CS_SELECTOR", Op::Read, GUEST_CS_SELECTOR, false, Want::Value(0x1234)),
    step("VMREAD TSC_OFFSET (high)", Op::Read, TSC_OFFSET | 1, false, Want::Value(0x1111_2222)),
    step("VMWRITE GUEST_CS_SELECTOR", Op::Write(0x5678), GUEST_CS_SELECTOR, false, Want::Value(0)),
    step("VMREAD GUEST_CS_SELECTOR again", Op::Read, GUEST_CS_SELECTOR, false, Want::Value(0x5678)),
    step("VMREAD GUEST_RIP (read bitmap bit set)", Op::Read, field::GUEST_RIP, true, Want::Value(FROM_L1 | 0x681e)),
    step("VMWRITE GUEST_RSP (write bitmap bit set)", Op::Write(1), field::GUEST_RSP, true, Want::Value(0)),
    step("VMREAD GUEST_RSP (read bitmap bit clear)", Op::Read, field::GUEST_RSP, false, Want::Value(0x7777)),
    step("VMWRITE GUEST_RIP (write bitmap bit clear)", Op::Write(0xabc), field::GUEST_RIP, false, Want::Value(0)),
    step(
        "VMREAD of an encoding with bit 32 set",
        Op::Read,
        1 << 32 | GUEST_CS_SELECTOR,
        true,
        Want::Value(FROM_L1 | 0x802),
    ),
    step("VMREAD of an unsupported field", Op::Read, 0x7776, false, Want::FailValid),
    step("VMWRITE of read-only VM_EXIT_REASON", Op::Write(1), VM_EXIT_REASON, false, Want::FailValid),
    step("VMREAD VM_INSTRUCTION_ERROR (emulated by L1)", Op::Read, VM_INSTRUCTION_ERROR, true, Want::Value(13)),
];

/// VMREAD with RFLAGS after it; the value is RAX, which L1 sets for an emulated one.
fn raw_vmread(field: u64) -> (u64, u64) {
    let (value, rflags): (u64, u64);
    // SAFETY: register operands; in VMX non-root operation it exits or uses the shadow VMCS.
    unsafe {
        asm!("xor eax, eax", "vmread rax, rcx", "pushfq", "pop rdx", in("rcx") field, out("rax") value, out("rdx") rflags)
    }
    (value, rflags)
}

fn raw_vmwrite(field: u64, value: u64) -> u64 {
    let rflags: u64;
    // SAFETY: as for raw_vmread.
    unsafe { asm!("vmwrite rcx, rax", "pushfq", "pop rdx", in("rcx") field, in("rax") value, out("rdx") rflags) }
    rflags
}

fn halt() -> ! {
    loop {
        // SAFETY: HLT exits to L1.
        unsafe { asm!("hlt") }
    }
}

/// L2: the table, one VMREAD with a memory destination, HLT.
extern "C" fn l2_main() -> ! {
    for (i, s) in STEPS.iter().enumerate() {
        let (value, rflags) = match s.op {
            Op::Read => raw_vmread(s.field),
            Op::Write(v) => (0, raw_vmwrite(s.field, v)),
        };
        RESULTS.write_u64(i * 16, value);
        RESULTS.write_u64(i * 16 + 8, rflags);
    }
    let dst = RESULTS.addr() + MEM_RESULT as u64;
    // SAFETY: a VMREAD storing 8 bytes into RESULTS.
    unsafe { asm!("vmread [rsi], rcx", in("rsi") dst, in("rcx") GUEST_CS_SELECTOR) }
    halt()
}

/// L2: one VMREAD of GUEST_CS_SELECTOR, then HLT.
extern "C" fn l2_probe() -> ! {
    let (value, _) = raw_vmread(GUEST_CS_SELECTOR);
    RESULTS.write_u64(MEM_RESULT + 8, value);
    halt()
}

fn main(info: &rt::BootInfo) -> u32 {
    let caps = Caps::read();
    if caps.proc2.allowed1 & PROC2_VMCS_SHADOWING == 0 {
        rt::println!("VMCS shadowing is not offered (IA32_VMX_PROCBASED_CTLS2 bit 46)");
        return NOT_OFFERED;
    }
    let ram_end = (u64::from(info.mem_upper_kib) + 1024) * 1024;
    match run(&caps, ram_end) {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

/// Sets `field`'s bit in a VMREAD/VMWRITE bitmap: bits 14:0 of the encoding (SDM 25.6.15).
fn intercept(bitmap: &Page, field: u64) {
    bitmap.set_bit((field & 0x7fff) as usize);
}

fn run(caps: &Caps, ram_end: u64) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    vmx::enable(VMXON_REGION.addr())?;
    let rev = caps.revision();

    // The shadow VMCS in VMX root operation.
    SHADOW.init_region(rev);
    SHADOW.write_u32(0, rev | 1 << 31);
    vmx::vmclear(SHADOW.addr())?;
    vmx::vmptrld(SHADOW.addr())?;
    for (f, v) in [(GUEST_CS_SELECTOR, 0x1234), (TSC_OFFSET, 0x1111_2222_3333_4444), (field::GUEST_RSP, 0x7777)] {
        hv::write(f, v)?;
    }
    let r = vmx::vmlaunch_bare();
    rt::check!(failures, r == Err(VmFail::Invalid), "VMLAUNCH of a shadow VMCS: ", hv::Outcome(r), " (VMfailInvalid)");
    let r = vmx::vmresume_bare();
    rt::check!(failures, r == Err(VmFail::Invalid), "VMRESUME of a shadow VMCS: ", hv::Outcome(r), " (VMfailInvalid)");
    vmx::vmclear(SHADOW.addr())?;
    rt::check!(
        failures,
        SHADOW.read_u32(0) == rev | 1 << 31,
        "VMCLEAR keeps the shadow-VMCS indicator: ",
        Hex(SHADOW.read_u32(0).into())
    );

    // The ordinary VMCS L2 runs on, with shadowing.
    hv::load_vmcs(caps, &VMCS)?;
    hv::setup_vmcs(
        caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top() - 64,
            proc: hv::ctl::PROC_HLT_EXITING,
            proc2: PROC2_VMCS_SHADOWING,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    READ_BITMAP.clear();
    WRITE_BITMAP.clear();
    intercept(&READ_BITMAP, field::GUEST_RIP);
    intercept(&READ_BITMAP, VM_INSTRUCTION_ERROR);
    intercept(&WRITE_BITMAP, field::GUEST_RSP);
    hv::write(VMREAD_BITMAP, READ_BITMAP.addr())?;
    hv::write(VMWRITE_BITMAP, WRITE_BITMAP.addr())?;
    hv::write(field::VMCS_LINK_POINTER, SHADOW.addr())?;

    let mut vcpu = Vcpu::default();
    let (mut reached, mut served) = (0u32, 0u32);
    let mut next = 0usize;
    let halted = loop {
        let Some(exit) = vcpu.enter(&mut failures) else { break false };
        match exit.basic() {
            reason::HLT => break true,
            r @ (reason::VMREAD | reason::VMWRITE) => {
                reached += 1;
                let Some(i) = (next..STEPS.len()).find(|&i| STEPS[i].exits) else {
                    rt::println!("FAIL an exit with reason ", r, " after the last one expected");
                    break false;
                };
                served += (i - next) as u32;
                let s = &STEPS[i];
                let want = if s.op == Op::Read { reason::VMREAD } else { reason::VMWRITE };
                rt::check!(failures, r == want, s.what, ": exit reason ", r, ", expected ", want);
                // The field is in RCX (Reg2 of the VMX-instruction information, SDM 28.2.5).
                let info = hv::read(field::VMX_INSTRUCTION_INFO)?;
                rt::check!(failures, info >> 28 & 0xf == 1, s.what, ": Reg2 ", info >> 28 & 0xf, " (RCX is 1)");
                rt::check!(failures, vcpu.regs.rcx == s.field, s.what, ": RCX ", Hex(vcpu.regs.rcx));
                if s.op == Op::Read {
                    vcpu.regs.rax = if s.field == VM_INSTRUCTION_ERROR {
                        hv::read(VM_INSTRUCTION_ERROR)?
                    } else {
                        FROM_L1 | (s.field & 0xffff)
                    };
                }
                hv::write(field::GUEST_RFLAGS, 2)?;
                exit.skip()?;
                next = i + 1;
            }
            _ => {
                rt::println!("FAIL unexpected ", hv::Seen(&exit));
                failures += 1;
                break false;
            }
        }
    };
    rt::check!(failures, halted, "L2 ran its table and halted");
    // The table's steps after the last exit, and the memory-destination VMREAD.
    served += (STEPS.len() - next) as u32 + 1;

    let any = caps.misc & MISC_VMWRITE_ANY != 0;
    for (i, s) in STEPS.iter().enumerate() {
        let (value, rflags) = (RESULTS.read_u64(i * 16), RESULTS.read_u64(i * 16 + 8));
        let want = match s.want {
            Want::FailValid if any && s.field == VM_EXIT_REASON => Want::Value(0),
            Want::Value(13) if any && s.field == VM_INSTRUCTION_ERROR => Want::Value(12),
            w => w,
        };
        match want {
            Want::Value(v) => rt::check!(
                failures,
                rflags & (RFLAGS_CF | RFLAGS_ZF) == 0 && value == v,
                s.what,
                ": ",
                Hex(value),
                ", RFLAGS ",
                Hex(rflags),
                " (VMsucceed, ",
                Hex(v),
                ")"
            ),
            Want::FailValid => rt::check!(
                failures,
                rflags & (RFLAGS_CF | RFLAGS_ZF) == RFLAGS_ZF,
                s.what,
                ": RFLAGS ",
                Hex(rflags),
                " (VMfailValid)"
            ),
        }
    }
    let m = RESULTS.read_u64(MEM_RESULT);
    rt::check!(failures, m == 0x5678, "VMREAD [rsi] from the shadow VMCS: ", Hex(m));
    // L2's VMWRITEs are in the shadow VMCS, the ordinary one kept its own values.
    let rip_here = hv::read(field::GUEST_RIP)?;
    rt::check!(failures, rip_here != 0xabc, "the ordinary VMCS's GUEST_RIP is L2's own: ", Hex(rip_here));
    vmx::vmptrld(SHADOW.addr())?;
    let (cs, rip) = (hv::read(GUEST_CS_SELECTOR)?, hv::read(field::GUEST_RIP)?);
    vmx::vmptrld(VMCS.addr())?;
    rt::check!(
        failures,
        cs == 0x5678 && rip == 0xabc,
        "the shadow VMCS holds L2's VMWRITEs: ",
        Hex(cs),
        ", ",
        Hex(rip)
    );

    failures += bad_link_pointers(&mut vcpu, rev)?;
    failures += bitmaps_at_the_end_of_ram(&mut vcpu, ram_end)?;

    let total = (STEPS.len() + 1) as u32;
    rt::println!(
        "L2 executed ",
        total,
        " VMREAD/VMWRITE: ",
        reached,
        " reached L1, ",
        served,
        " were served from the shadow VMCS"
    );
    rt::check!(failures, reached + served == total && reached == 4, "4 of them exit to L1");
    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-shadow: all checks passed" } else { "vmx-shadow: some checks FAILED" });
    Ok(failures)
}

/// VM entry with shadowing checks the link pointer (SDM 27.3.1.5): each of these fails the
/// entry with reason 33 and qualification 4, and L2 does not run.
fn bad_link_pointers(vcpu: &mut Vcpu, rev: u32) -> Result<u32, VmFail> {
    let mut failures = 0;
    ORDINARY.init_region(rev);
    for (what, link) in [
        ("the current VMCS", VMCS.addr()),
        ("an ordinary VMCS", ORDINARY.addr()),
        ("an address outside RAM", 0xf_0000_0000),
        ("a misaligned address", SHADOW.addr() + 8),
    ] {
        hv::write(field::VMCS_LINK_POINTER, link)?;
        let exit = vcpu.run()?;
        rt::check!(
            failures,
            exit.reason == reason::ENTRY_FAILURE | reason::ENTRY_FAIL_GUEST_STATE
                && exit.qualification == QUAL_VMCS_LINK_POINTER,
            "VMCS link pointer to ",
            what,
            ": exit reason ",
            Hex(exit.reason.into()),
            ", qualification ",
            exit.qualification
        );
    }
    hv::write(field::VMCS_LINK_POINTER, SHADOW.addr())?;
    Ok(failures)
}

/// A VMREAD bitmap in the last page of RAM is read like any other; one past the end of RAM
/// reads as all ones, so every VMREAD exits.
fn bitmaps_at_the_end_of_ram(vcpu: &mut Vcpu, ram_end: u64) -> Result<u32, VmFail> {
    let mut failures = 0;
    let last = ram_end - 4096;
    // SAFETY: the last page of RAM, identity-mapped (below 4 GiB) and used by nothing else.
    unsafe { core::ptr::write_bytes(last as *mut u8, 0, 4096) };
    for (what, bitmap, exits) in [("the last page of RAM", last, false), ("past the end of RAM", ram_end, true)] {
        hv::write(VMREAD_BITMAP, bitmap)?;
        hv::write(field::GUEST_RIP, l2_probe as *const () as u64)?;
        hv::write(field::GUEST_RSP, L2_STACK.top() - 64)?;
        RESULTS.write_u64(MEM_RESULT + 8, 0);
        let mut exit = vcpu.run()?;
        let exited = exit.basic() == reason::VMREAD;
        if exited {
            vcpu.regs.rax = FROM_L1;
            exit.skip()?;
            exit = vcpu.run()?;
        }
        let value = RESULTS.read_u64(MEM_RESULT + 8);
        rt::check!(
            failures,
            exited == exits && exit.basic() == reason::HLT && value == if exits { FROM_L1 } else { 0x5678 },
            "VMREAD bitmap ",
            what,
            ": VMREAD ",
            if exited { "exits" } else { "served from the shadow VMCS" },
            ", L2 reads ",
            Hex(value)
        );
    }
    hv::write(VMREAD_BITMAP, READ_BITMAP.addr())?;
    Ok(failures)
}
