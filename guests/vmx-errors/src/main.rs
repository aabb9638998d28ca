//! Every way the VMX instructions fail (SDM 31.2 conventions, 31.4 error numbers, the
//! instruction pages of 32.3): #UD outside VMX operation, VMfailInvalid without a current VMCS,
//! VMfailValid(n) with one, and a VM-entry failure on invalid guest state (SDM 27.8).
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, error, field, reason, Caps, Config, Outcome, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS_A: Page = Page::new();
static VMCS_B: Page = Page::new();
static L2_STACK: Stack = Stack::new();

const UD: VmFail = VmFail::Fault(6);
const INVALID: Result<(), VmFail> = Err(VmFail::Invalid);
const OK: Result<(), VmFail> = Ok(());

fn valid(n: u32) -> Result<(), VmFail> {
    Err(VmFail::Valid(n))
}

extern "C" fn l2_main() -> ! {
    loop {
        // SAFETY: HLT exits to L1.
        unsafe { asm!("hlt") }
    }
}

struct Checker {
    failures: u32,
}

impl Checker {
    fn expect<T>(&mut self, what: &str, got: Result<T, VmFail>, want: Result<(), VmFail>) {
        let got = got.map(|_| ());
        let ok = got == want;
        rt::print!(if ok { "ok   " } else { "FAIL " }, what, ": ", Outcome(got));
        if !ok {
            rt::print!(" (expected ", Outcome(want), ")");
            self.failures += 1;
        }
        rt::println!();
    }

    fn check(&mut self, ok: bool, what: &str, v: u64) {
        rt::println!(if ok { "ok   " } else { "FAIL " }, what, Hex(v));
        self.failures += u32::from(!ok);
    }
}

fn main(_: &rt::BootInfo) -> u32 {
    let mut c = Checker { failures: 0 };
    let caps = Caps::read();
    if let Err(e) = run(&mut c, &caps) {
        rt::println!("FAIL a setup step failed: ", e);
        c.failures += 1;
    }
    rt::println!(if c.failures == 0 { "vmx-errors: all checks passed" } else { "vmx-errors: some checks FAILED" });
    c.failures
}

fn run(c: &mut Checker, caps: &Caps) -> Result<(), VmFail> {
    let rev = caps.revision();
    let (a, b, on) = (VMCS_A.addr(), VMCS_B.addr(), VMXON_REGION.addr());
    let desc = [0u64; 2];

    rt::println!("-- outside VMX operation every VMX instruction but VMXON is #UD (SDM 32.3)");
    c.expect("VMREAD", vmx::vmread(field::GUEST_RIP), Err(UD));
    c.expect("VMWRITE", vmx::vmwrite(field::GUEST_RIP, 0), Err(UD));
    c.expect("VMCLEAR", vmx::vmclear(a), Err(UD));
    c.expect("VMPTRLD", vmx::vmptrld(a), Err(UD));
    c.expect("VMPTRST", vmx::vmptrst(), Err(UD));
    c.expect("VMLAUNCH", vmx::vmlaunch_bare(), Err(UD));
    c.expect("VMRESUME", vmx::vmresume_bare(), Err(UD));
    c.expect("VMXOFF", vmx::vmxoff(), Err(UD));
    c.expect("INVEPT", vmx::invept(2, &desc), Err(UD));
    c.expect("INVVPID", vmx::invvpid(2, &desc), Err(UD));

    rt::println!("-- VMXON (SDM 32.3 VMXON)");
    let fc = rt::io::rdmsr(hv::msr::IA32_FEATURE_CONTROL);
    if fc & 1 == 0 {
        rt::io::wrmsr(hv::msr::IA32_FEATURE_CONTROL, fc | 1 | 4);
    }
    rt::vmx::try_set_cr4_vmxe();
    VMXON_REGION.init_region(rev.wrapping_add(1));
    c.expect("VMXON with a wrong revision identifier", vmx::vmxon(on), INVALID);
    VMXON_REGION.init_region(rev);
    c.expect("VMXON with an unaligned address", vmx::vmxon(on + 0x10), INVALID);
    c.expect("VMXON", vmx::vmxon(on), OK);

    rt::println!("-- in VMX root operation without a current VMCS: VMfailInvalid");
    let cur = vmx::vmptrst()?;
    c.check(cur == u64::MAX, "VMPTRST gives FFFFFFFF_FFFFFFFF: ", cur);
    c.expect("VMREAD", vmx::vmread(field::GUEST_RIP), INVALID);
    c.expect("VMWRITE", vmx::vmwrite(field::GUEST_RIP, 0), INVALID);
    c.expect("VMLAUNCH", vmx::vmlaunch_bare(), INVALID);
    c.expect("VMCLEAR of an unaligned address", vmx::vmclear(a + 8), INVALID);
    c.expect("VMXON again", vmx::vmxon(on), INVALID);

    rt::println!("-- with a current VMCS: VMfailValid(n)");
    VMCS_A.init_region(rev);
    c.expect("VMCLEAR A", vmx::vmclear(a), OK);
    c.expect("VMPTRLD A", vmx::vmptrld(a), OK);
    c.expect("VMXON again (15)", vmx::vmxon(on), valid(error::VMXON_IN_ROOT));
    c.expect("VMCLEAR of an unaligned address (2)", vmx::vmclear(a + 8), valid(error::VMCLEAR_INVALID_ADDRESS));
    c.expect(
        "VMCLEAR beyond the physical-address width (2)",
        vmx::vmclear(1 << 63),
        valid(error::VMCLEAR_INVALID_ADDRESS),
    );
    c.expect("VMCLEAR of the VMXON pointer (3)", vmx::vmclear(on), valid(error::VMCLEAR_VMXON_POINTER));
    c.expect("VMPTRLD of an unaligned address (9)", vmx::vmptrld(a + 8), valid(error::VMPTRLD_INVALID_ADDRESS));
    c.expect("VMPTRLD of the VMXON pointer (10)", vmx::vmptrld(on), valid(error::VMPTRLD_VMXON_POINTER));
    VMCS_B.init_region(rev.wrapping_add(1));
    c.expect("VMPTRLD with a wrong revision identifier (11)", vmx::vmptrld(b), valid(error::VMPTRLD_WRONG_REVISION));
    let cur = vmx::vmptrst()?;
    c.check(cur == a, "the failed VMPTRLDs left A current: VMPTRST = ", cur);
    c.expect("VMREAD of unsupported field 0x7fff (12)", vmx::vmread(0x7fff), valid(error::UNSUPPORTED_VMCS_COMPONENT));
    c.expect(
        "VMWRITE of unsupported field 0x7fff (12)",
        vmx::vmwrite(0x7fff, 0),
        valid(error::UNSUPPORTED_VMCS_COMPONENT),
    );
    if caps.misc & (1 << 29) == 0 {
        c.expect(
            "VMWRITE of read-only VM_EXIT_REASON (13)",
            vmx::vmwrite(field::VM_EXIT_REASON, 0),
            valid(error::VMWRITE_READ_ONLY),
        );
    } else {
        rt::println!("skip VMWRITE of a read-only field: IA32_VMX_MISC[29] allows it");
    }
    invalidations(c, caps);

    rt::println!("-- VMLAUNCH/VMRESUME: launch state, controls and host state (SDM 27.1, 27.2)");
    let mut vcpu = Vcpu::default();
    c.expect(
        "VMRESUME of a clear VMCS (5)",
        vmx::vm_run(&mut vcpu.regs, true),
        valid(error::VMRESUME_NONLAUNCHED_VMCS),
    );
    hv::setup_vmcs(
        caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    let pin = vmx::vmread(field::PIN_BASED_VM_EXEC_CONTROL)?;
    let forbidden = !caps.pin.allowed1;
    if forbidden != 0 {
        let bit = u64::from(forbidden & forbidden.wrapping_neg());
        vmx::vmwrite(field::PIN_BASED_VM_EXEC_CONTROL, pin | bit)?;
        c.expect(
            "VMLAUNCH with a pin-based control allowed1 forbids (7)",
            vmx::vm_run(&mut vcpu.regs, false),
            valid(error::ENTRY_INVALID_CONTROL_FIELD),
        );
    }
    let required = caps.pin.allowed0;
    if required != 0 {
        let bit = u64::from(required & required.wrapping_neg());
        vmx::vmwrite(field::PIN_BASED_VM_EXEC_CONTROL, pin & !bit)?;
        c.expect(
            "VMLAUNCH without a pin-based control allowed0 requires (7)",
            vmx::vm_run(&mut vcpu.regs, false),
            valid(error::ENTRY_INVALID_CONTROL_FIELD),
        );
    }
    vmx::vmwrite(field::PIN_BASED_VM_EXEC_CONTROL, pin)?;
    for (name, f, bad) in [
        ("VMLAUNCH with HOST_CR0 lacking PE and PG (8)", field::HOST_CR0, rt::io::cr0() & !0x8000_0001),
        ("VMLAUNCH with a null HOST_CS_SELECTOR (8)", field::HOST_CS_SELECTOR, 0),
        ("VMLAUNCH with a null HOST_TR_SELECTOR (8)", field::HOST_TR_SELECTOR, 0),
    ] {
        let good = vmx::vmread(f)?;
        vmx::vmwrite(f, bad)?;
        c.expect(name, vmx::vm_run(&mut vcpu.regs, false), valid(error::ENTRY_INVALID_HOST_STATE));
        vmx::vmwrite(f, good)?;
    }

    rt::println!("-- VM-entry failure on invalid guest state (SDM 27.3, 27.8)");
    vmx::vmwrite(field::GUEST_RFLAGS, 0)?;
    let r = vmx::vm_run(&mut vcpu.regs, false);
    c.expect("VMLAUNCH with GUEST_RFLAGS bit 1 clear returns through HOST_RIP", r, OK);
    let why = vmx::vmread(field::VM_EXIT_REASON)?;
    c.check(
        why == u64::from(reason::ENTRY_FAILURE | reason::ENTRY_FAIL_GUEST_STATE),
        "VM_EXIT_REASON = 0x80000021: ",
        why,
    );
    c.expect(
        "VMRESUME after that failed entry: still not launched (5)",
        vmx::vm_run(&mut vcpu.regs, true),
        valid(error::VMRESUME_NONLAUNCHED_VMCS),
    );
    vmx::vmwrite(field::GUEST_RFLAGS, 2)?;

    rt::println!("-- a good launch, then the launch state (SDM 32.3 VMLAUNCH/VMRESUME)");
    c.expect("VMLAUNCH", vmx::vm_run(&mut vcpu.regs, false), OK);
    let why = vmx::vmread(field::VM_EXIT_REASON)?;
    c.check(why == u64::from(reason::HLT), "exit reason HLT (12): ", why);
    hv::Exit::read()?.skip()?;
    c.expect(
        "VMLAUNCH of a launched VMCS (4)",
        vmx::vm_run(&mut vcpu.regs, false),
        valid(error::VMLAUNCH_NONCLEAR_VMCS),
    );
    c.expect("VMRESUME", vmx::vm_run(&mut vcpu.regs, true), OK);
    let why = vmx::vmread(field::VM_EXIT_REASON)?;
    c.check(why == u64::from(reason::HLT), "exit reason HLT (12): ", why);
    c.expect("VMCLEAR of the current VMCS", vmx::vmclear(a), OK);
    let cur = vmx::vmptrst()?;
    c.check(cur == u64::MAX, "VMCLEAR made no VMCS current: VMPTRST = ", cur);

    rt::println!("-- VMXOFF");
    c.expect("VMXOFF", vmx::vmxoff(), OK);
    c.expect("VMREAD after VMXOFF", vmx::vmread(field::GUEST_RIP), Err(UD));
    c.expect("VMXOFF after VMXOFF", vmx::vmxoff(), Err(UD));
    Ok(())
}

/// INVEPT and INVVPID (SDM 32.3): #UD when the processor lacks them, VMfailValid(28) for a
/// type it does not support.
fn invalidations(c: &mut Checker, caps: &Caps) {
    let desc = [0u64; 2];
    let ept = caps.proc2.allowed1 & ctl::PROC2_ENABLE_EPT != 0 && caps.ept_vpid & (1 << 20) != 0;
    if ept {
        c.expect("INVEPT of type 0 (28)", vmx::invept(0, &desc), valid(error::INVALID_INVEPT_INVVPID_OPERAND));
        if caps.ept_vpid & (1 << 26) != 0 {
            c.expect("INVEPT all-context", vmx::invept(2, &desc), OK);
        }
    } else {
        c.expect("INVEPT without EPT support", vmx::invept(2, &desc), Err(UD));
    }
    let vpid = caps.proc2.allowed1 & ctl::PROC2_ENABLE_VPID != 0 && caps.ept_vpid & (1 << 32) != 0;
    if vpid {
        c.expect("INVVPID of type 4 (28)", vmx::invvpid(4, &desc), valid(error::INVALID_INVEPT_INVVPID_OPERAND));
        if caps.ept_vpid & (1 << 42) != 0 {
            c.expect("INVVPID all-context", vmx::invvpid(2, &desc), OK);
        }
    } else {
        c.expect("INVVPID without VPID support", vmx::invvpid(2, &desc), Err(UD));
    }
}
