//! A seeded random stream of VMX operations near the valid/invalid boundary, the way NecoFuzz
//! builds its harness VMs: from a valid VMCS, change one field or control (a bit flip or a
//! boundary value), VMLAUNCH or VMRESUME, check that the outcome is one the SDM allows, put
//! the field back, and go on. Host-state fields only get values the VM-entry checks refuse,
//! and nothing that makes nestbed write L1 memory is touched, so L1 survives every outcome.
//! Command line: `seed=S n=N [verbose]` (defaults 1 and 500; verbose prints each change
//! before its VM entry). Exit 0 when every outcome was an SDM
//! outcome, 1 otherwise.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{field, Caps, Config, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();

extern "C" fn l2_main() -> ! {
    loop {
        // SAFETY: HLT exits to L1 (HLT exiting, or else the VMX-preemption timer).
        unsafe { asm!("hlt") }
    }
}

/// How a field may change.
#[derive(Clone, Copy)]
enum Change {
    /// A flipped bit below `bits`, or a boundary value.
    Any { bits: u32 },
    /// Only a value the VM-entry checks refuse: what entering with it would do to L1 (or L2's
    /// path through L1's memory) is not this guest's experiment.
    Refused(fn(u64) -> u64),
}

fn non_canonical(v: u64) -> u64 {
    v ^ 1 << 62
}

fn unaligned(v: u64) -> u64 {
    v | 1
}

/// The fields changed, by encoding (SDM Appendix B).
const FIELDS: [(u64, Change); 64] = [
    // Controls (SDM 25.6, 25.7, 25.8): every bit, against the allowed-0/allowed-1 settings.
    (0x4000, Change::Any { bits: 32 }),   // PIN_BASED_VM_EXEC_CONTROL
    (0x4002, Change::Any { bits: 32 }),   // CPU_BASED_VM_EXEC_CONTROL
    (0x401e, Change::Any { bits: 32 }),   // SECONDARY_VM_EXEC_CONTROL
    (0x400c, Change::Any { bits: 32 }),   // VM_EXIT_CONTROLS
    (0x4012, Change::Any { bits: 32 }),   // VM_ENTRY_CONTROLS
    (0x4004, Change::Any { bits: 32 }),   // EXCEPTION_BITMAP
    (0x4006, Change::Any { bits: 32 }),   // PAGE_FAULT_ERROR_CODE_MASK
    (0x4008, Change::Any { bits: 32 }),   // PAGE_FAULT_ERROR_CODE_MATCH
    (0x400a, Change::Any { bits: 32 }),   // CR3_TARGET_COUNT
    (0x4016, Change::Any { bits: 32 }),   // VM_ENTRY_INTR_INFO_FIELD
    (0x4018, Change::Any { bits: 32 }),   // VM_ENTRY_EXCEPTION_ERROR_CODE
    (0x401a, Change::Any { bits: 32 }),   // VM_ENTRY_INSTRUCTION_LEN
    (0x401c, Change::Any { bits: 32 }),   // TPR_THRESHOLD
    (0x482e, Change::Any { bits: 32 }),   // VMX_PREEMPTION_TIMER_VALUE
    (0x0000, Change::Any { bits: 16 }),   // VIRTUAL_PROCESSOR_ID
    (0x201a, Change::Any { bits: 64 }),   // EPT_POINTER
    (0x6000, Change::Any { bits: 64 }),   // CR0_GUEST_HOST_MASK
    (0x6002, Change::Any { bits: 64 }),   // CR4_GUEST_HOST_MASK
    (0x6004, Change::Any { bits: 64 }),   // CR0_READ_SHADOW
    (0x6006, Change::Any { bits: 64 }),   // CR4_READ_SHADOW
    (0x2000, Change::Refused(unaligned)), // IO_BITMAP_A
    (0x2004, Change::Refused(unaligned)), // MSR_BITMAP
    // Guest state (SDM 25.4, checked by 27.3).
    (0x6800, Change::Any { bits: 64 }),       // GUEST_CR0
    (0x6804, Change::Any { bits: 64 }),       // GUEST_CR4
    (0x6802, Change::Refused(non_canonical)), // GUEST_CR3
    (0x681a, Change::Any { bits: 64 }),       // GUEST_DR7
    (0x6820, Change::Any { bits: 64 }),       // GUEST_RFLAGS
    (0x681e, Change::Refused(non_canonical)), // GUEST_RIP
    (0x6822, Change::Any { bits: 64 }),       // GUEST_PENDING_DBG_EXCEPTIONS
    (0x2802, Change::Any { bits: 64 }),       // GUEST_IA32_DEBUGCTL
    (0x2804, Change::Any { bits: 64 }),       // GUEST_IA32_PAT
    (0x2806, Change::Any { bits: 64 }),       // GUEST_IA32_EFER
    (0x2800, Change::Any { bits: 64 }),       // VMCS_LINK_POINTER
    (0x4824, Change::Any { bits: 32 }),       // GUEST_INTERRUPTIBILITY_INFO
    (0x4826, Change::Refused(activity)),      // GUEST_ACTIVITY_STATE
    (0x482a, Change::Any { bits: 32 }),       // GUEST_SYSENTER_CS
    (0x6824, Change::Any { bits: 64 }),       // GUEST_SYSENTER_ESP
    (0x0800, Change::Any { bits: 16 }),       // GUEST_ES_SELECTOR
    (0x0802, Change::Any { bits: 16 }),       // GUEST_CS_SELECTOR
    (0x0804, Change::Any { bits: 16 }),       // GUEST_SS_SELECTOR
    (0x0806, Change::Any { bits: 16 }),       // GUEST_DS_SELECTOR
    (0x080c, Change::Any { bits: 16 }),       // GUEST_LDTR_SELECTOR
    (0x080e, Change::Any { bits: 16 }),       // GUEST_TR_SELECTOR
    (0x4800, Change::Any { bits: 32 }),       // GUEST_ES_LIMIT
    (0x4802, Change::Any { bits: 32 }),       // GUEST_CS_LIMIT
    (0x4804, Change::Any { bits: 32 }),       // GUEST_SS_LIMIT
    (0x480e, Change::Any { bits: 32 }),       // GUEST_TR_LIMIT
    (0x4810, Change::Any { bits: 32 }),       // GUEST_GDTR_LIMIT
    (0x4814, Change::Any { bits: 32 }),       // GUEST_ES_AR_BYTES
    (0x4816, Change::Any { bits: 32 }),       // GUEST_CS_AR_BYTES
    (0x4818, Change::Any { bits: 32 }),       // GUEST_SS_AR_BYTES
    (0x481a, Change::Any { bits: 32 }),       // GUEST_DS_AR_BYTES
    (0x4820, Change::Any { bits: 32 }),       // GUEST_LDTR_AR_BYTES
    (0x4822, Change::Any { bits: 32 }),       // GUEST_TR_AR_BYTES
    (0x6814, Change::Refused(non_canonical)), // GUEST_TR_BASE
    (0x6816, Change::Refused(non_canonical)), // GUEST_GDTR_BASE
    (0x6818, Change::Refused(non_canonical)), // GUEST_IDTR_BASE
    // Host state (SDM 25.5, checked by 27.2.2-27.2.4): refused values only.
    (0x6c00, Change::Refused(|v| v & !(1 << 31))), // HOST_CR0 without PG
    (0x6c04, Change::Refused(|v| v & !(1 << 5))),  // HOST_CR4 without PAE
    (0x0c02, Change::Refused(|_| 0)),              // HOST_CS_SELECTOR null
    (0x0c0c, Change::Refused(|_| 0)),              // HOST_TR_SELECTOR null
    (0x0c04, Change::Refused(|v| v | 1)),          // HOST_SS_SELECTOR with RPL 1
    (0x2c02, Change::Refused(|v| v & !(1 << 10))), // HOST_IA32_EFER without LMA
    (0x6c0c, Change::Refused(non_canonical)),      // HOST_GDTR_BASE
];

/// Activity states other than HLT, which would wait for an event nobody sends.
fn activity(v: u64) -> u64 {
    [0, 2, 3, 4, v | 0x10][(v as usize) % 5]
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Counts {
    entered: u32,
    entry_failures: u32,
    /// VMfailValid(n), by n.
    fail_valid: [u32; 32],
    vmwrite_refused: u32,
    unexpected: u32,
}

fn main(info: &rt::BootInfo) -> u32 {
    let (mut seed, mut n, mut verbose) = (1, 500, false);
    let mut rest = info.args;
    loop {
        let (word, r) = rt::next_word(rest);
        if word.is_empty() {
            break;
        }
        rest = r;
        if let Some(v) = word.strip_prefix("seed=").and_then(rt::parse_u64) {
            seed = v;
        } else if let Some(v) = word.strip_prefix("n=").and_then(rt::parse_u64) {
            n = v;
        } else if word == "verbose" {
            verbose = true;
        }
    }
    match run(seed, n, verbose) {
        Ok(c) => {
            rt::println!(
                "vmx-chaos: seed ",
                seed,
                ", ",
                n,
                " VM entries tried: ",
                c.entered,
                " entered, ",
                c.entry_failures,
                " entry-failure exits, VMfailValid(4/5/7/8/26) ",
                c.fail_valid[4],
                "/",
                c.fail_valid[5],
                "/",
                c.fail_valid[7],
                "/",
                c.fail_valid[8],
                "/",
                c.fail_valid[26],
                ", ",
                c.vmwrite_refused,
                " VMWRITEs refused, ",
                c.unexpected,
                " outcomes outside the SDM"
            );
            u32::from(c.unexpected != 0)
        }
        Err(e) => {
            rt::println!("vmx-chaos: FAIL a setup step failed: ", e);
            1
        }
    }
}

fn run(seed: u64, n: u64, verbose: bool) -> Result<Counts, VmFail> {
    let caps = Caps::read();
    let fc = rt::io::rdmsr(hv::msr::IA32_FEATURE_CONTROL);
    if fc & 1 == 0 {
        rt::io::wrmsr(hv::msr::IA32_FEATURE_CONTROL, fc | 1 | 4);
    }
    rt::vmx::try_set_cr4_vmxe();
    VMXON_REGION.init_region(caps.revision());
    VMCS.init_region(caps.revision());
    vmx::vmxon(VMXON_REGION.addr())?;
    vmx::vmclear(VMCS.addr())?;
    vmx::vmptrld(VMCS.addr())?;
    let cfg = Config {
        entry: l2_main,
        stack_top: L2_STACK.top(),
        proc: hv::ctl::PROC_HLT_EXITING,
        proc2: 0,
        io_bitmaps: None,
        msr_bitmap: None,
    };
    hv::setup_vmcs(&caps, &cfg)?;
    // Every exception L2 meets exits to L1, and L2 has no IDT of its own to reach L1's
    // handlers through.
    vmx::vmwrite(field::EXCEPTION_BITMAP, 0xffff_ffff)?;
    vmx::vmwrite(field::GUEST_IDTR_LIMIT, 0)?;
    // The VMX-preemption timer ends L2's run whatever one changed control does (a cleared
    // HLT exiting leaves L2 halted with interrupts disabled).
    if caps.pin.allowed1 & hv::ctl::PIN_ACTIVATE_PREEMPTION_TIMER != 0 {
        let pin = vmx::vmread(field::PIN_BASED_VM_EXEC_CONTROL)?;
        vmx::vmwrite(field::PIN_BASED_VM_EXEC_CONTROL, pin | u64::from(hv::ctl::PIN_ACTIVATE_PREEMPTION_TIMER))?;
        vmx::vmwrite(field::VMX_PREEMPTION_TIMER_VALUE, 20_000)?;
    }
    let mut good = [0u64; FIELDS.len()];
    for (g, (enc, _)) in good.iter_mut().zip(FIELDS) {
        *g = vmx::vmread(enc).unwrap_or(0);
    }
    let guest_rsp = vmx::vmread(field::GUEST_RSP)?;
    let mut rng = Rng(seed);
    let mut c = Counts::default();
    let mut vcpu = Vcpu::default();
    for _ in 0..n {
        let i = rng.below(FIELDS.len() as u64) as usize;
        let (enc, change) = FIELDS[i];
        let value = match change {
            Change::Any { bits } => match rng.below(4) {
                0 => [0, u64::MAX, good[i].wrapping_add(1), good[i].wrapping_sub(1)][rng.below(4) as usize],
                _ => good[i] ^ 1 << rng.below(u64::from(bits)),
            },
            Change::Refused(f) => f(good[i]),
        };
        if let Err(e) = vmx::vmwrite(enc, value) {
            match e {
                VmFail::Valid(12 | 13) => c.vmwrite_refused += 1,
                _ => c.unexpected += 1,
            }
        }
        // Now and then the wrong one of VMLAUNCH and VMRESUME, or a VMCLEAR first.
        if rng.below(32) == 0 {
            vmx::vmclear(VMCS.addr())?;
            vmx::vmptrld(VMCS.addr())?;
            vcpu.launched = false;
        }
        let resume = if rng.below(8) == 0 { !vcpu.launched } else { vcpu.launched };
        if verbose {
            rt::println!(
                "vmx-chaos: field ",
                rt::Hex(enc),
                " = ",
                rt::Hex(value),
                if resume { ", VMRESUME" } else { ", VMLAUNCH" }
            );
        }
        match vmx::vm_run(&mut vcpu.regs, resume) {
            Ok(()) => {
                let why = vmx::vmread(field::VM_EXIT_REASON)?;
                if why & 1 << 31 != 0 {
                    // SDM 27.8: invalid guest state (33), MSR loading (34), machine check (41).
                    c.entry_failures += 1;
                    c.unexpected += u32::from(!matches!(why & 0xffff, 33 | 34 | 41));
                } else {
                    c.entered += 1;
                    vcpu.launched = true;
                    c.unexpected += u32::from(why & 0xffff >= 80);
                }
            }
            // SDM 31.4: the errors VMLAUNCH/VMRESUME can give with a current VMCS.
            Err(VmFail::Valid(e @ (4 | 5 | 7 | 8 | 26))) => c.fail_valid[e as usize] += 1,
            Err(e) => {
                rt::println!("vmx-chaos: outside the SDM: field ", rt::Hex(enc), " = ", rt::Hex(value), ": ", e);
                c.unexpected += 1;
            }
        }
        // Back to the valid VMCS: this field, and the guest state a VM exit saved.
        vmx::vmwrite(enc, good[i])?;
        for (j, (e, _)) in FIELDS.iter().enumerate() {
            if *e >= 0x6800 || (0x0800..0x0900).contains(e) || (0x4800..0x4900).contains(e) {
                vmx::vmwrite(*e, good[j])?;
            }
        }
        vmx::vmwrite(field::GUEST_RIP, l2_main as *const () as u64)?;
        vmx::vmwrite(field::GUEST_RSP, guest_rsp)?;
    }
    Ok(c)
}
