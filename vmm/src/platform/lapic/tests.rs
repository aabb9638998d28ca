use super::*;

/// 2 GHz: two TSC ticks per bus cycle.
const TSC_KHZ: u64 = 2_000_000;
const X2APIC_BASE: u64 = DEFAULT_BASE | BASE_EN | BASE_EXTD | BASE_BSP;
const XAPIC_BASE: u64 = DEFAULT_BASE | BASE_EN | BASE_BSP;

fn rd(apic: &mut Lapic, reg: u32) -> u32 {
    apic.read(u64::from(reg), 4, 0)
}

fn wr(apic: &mut Lapic, reg: u32, value: u32) -> Effect {
    apic.write(u64::from(reg), 4, value, 0)
}

/// Software-enabled, spurious vector 0xff.
fn enabled() -> Lapic {
    let mut apic = Lapic::new(TSC_KHZ);
    wr(&mut apic, reg::SPIV, 0x1ff);
    apic
}

fn x2apic() -> Lapic {
    let mut apic = enabled();
    apic.wrmsr(APIC_BASE_MSR, X2APIC_BASE, 0).unwrap();
    apic
}

fn irr_has(apic: &mut Lapic, vector: u8) -> bool {
    let word = rd(apic, reg::IRR + u32::from(vector >> 5) * 0x10);
    word & (1 << (vector & 31)) != 0
}

/// ESR as software reads it: write, then read.
fn esr(apic: &mut Lapic) -> u32 {
    wr(apic, reg::ESR, 0);
    rd(apic, reg::ESR)
}

// ---- registers ----

#[test]
fn version_and_id() {
    let mut apic = Lapic::new(TSC_KHZ);
    assert_eq!(rd(&mut apic, reg::VERSION), 0x0005_0014);
    assert_eq!(rd(&mut apic, reg::ID), 0);
    wr(&mut apic, reg::ID, 0x0300_0000);
    assert_eq!(rd(&mut apic, reg::ID), 0x0300_0000);
    wr(&mut apic, reg::VERSION, 0);
    assert_eq!(rd(&mut apic, reg::VERSION), 0x0005_0014, "version is read-only");
}

#[test]
fn power_up_values() {
    let mut apic = Lapic::new(TSC_KHZ);
    for (reg, value) in [
        (reg::TPR, 0),
        (reg::PPR, 0),
        (reg::LDR, 0),
        (reg::DFR, u32::MAX),
        (reg::SPIV, 0xff),
        (reg::LVT_CMCI, LVT_MASKED),
        (reg::LVT_TIMER, LVT_MASKED),
        (reg::LVT_THERMAL, LVT_MASKED),
        (reg::LVT_PERF, LVT_MASKED),
        (reg::LVT_LINT0, 0x700),
        (reg::LVT_LINT1, LVT_MASKED),
        (reg::LVT_ERROR, LVT_MASKED),
        (reg::INITIAL_COUNT, 0),
        (reg::CURRENT_COUNT, 0),
        (reg::DIVIDE_CONFIG, 0),
    ] {
        assert_eq!(rd(&mut apic, reg), value, "register {reg:#x}");
    }
    assert_eq!(apic.rdmsr(APIC_BASE_MSR, 0), Ok(0xfee0_0900));
    assert_eq!(apic.mode(), Mode::XApic);
    assert_eq!(apic.mmio_base(), Some(DEFAULT_BASE));
}

#[test]
fn sub_dword_reads() {
    let mut apic = Lapic::new(TSC_KHZ);
    for (offset, len, value) in
        [(0x30, 1, 0x14), (0x30, 2, 0x14), (0x32, 1, 0x05), (0x32, 2, 0x05), (0x31, 1, 0), (0xf0, 1, 0xff)]
    {
        assert_eq!(apic.read(offset, len, 0), value, "offset {offset:#x} len {len}");
    }
}

#[test]
fn odd_accesses_read_zero_and_are_ignored() {
    let mut apic = Lapic::new(TSC_KHZ);
    for (offset, len) in [
        (0x30, 0),
        (0x30, 3),
        (0x30, 8),
        (0x32, 4),
        (0x34, 4),
        (0x3c, 4),
        (0x1000, 4),
        (u64::MAX, 4),
        (0x30, usize::MAX),
    ] {
        assert_eq!(apic.read(offset, len, 0), 0, "offset {offset:#x} len {len}");
    }
    for (offset, len) in [(0x80, 2), (0x80, 8), (0x84, 4), (0x81, 4), (0x1080, 4), (u64::MAX, 4)] {
        assert_eq!(apic.write(offset, len, 0xff, 0), Effect::None);
        assert_eq!(rd(&mut apic, reg::TPR), 0, "offset {offset:#x} len {len}");
    }
    assert_eq!(esr(&mut apic), 0);
}

#[test]
fn no_input_panics() {
    let mut apic = enabled();
    for offset in (0..0x1010).step_by(3) {
        for len in 0..9 {
            apic.read(offset, len, offset);
            apic.write(offset, len, 0xffff_ffff, offset);
        }
    }
    for mut apic in [enabled(), x2apic()] {
        for index in (0x7f0..0x910).chain([0, 0x1b, 0x6e0, u32::MAX]) {
            for value in [0, 1, 0xff, 0x1_0000_0000, u64::MAX] {
                let _ = apic.rdmsr(index, value);
                let _ = apic.wrmsr(index, value, value);
            }
            apic.tick(u64::MAX);
            apic.next_deadline();
        }
    }
    for tsc_khz in [0, 1, u64::MAX] {
        let mut apic = Lapic::new(tsc_khz);
        wr(&mut apic, reg::LVT_TIMER, 0x20020);
        wr(&mut apic, reg::INITIAL_COUNT, u32::MAX);
        apic.tick(u64::MAX);
        apic.read(u64::from(reg::CURRENT_COUNT), 4, u64::MAX);
    }
}

#[test]
fn reserved_registers_log_illegal_register_address() {
    let mut apic = enabled();
    assert_eq!(rd(&mut apic, 0x40), 0);
    assert_eq!(esr(&mut apic), esr::ILLEGAL_REGISTER_ADDRESS);
    assert_eq!(esr(&mut apic), 0);
    wr(&mut apic, reg::SELF_IPI, 0x40);
    assert_eq!(esr(&mut apic), esr::ILLEGAL_REGISTER_ADDRESS);
    assert!(!irr_has(&mut apic, 0x40));
}

#[test]
fn ldr_dfr_writable_bits() {
    let mut apic = Lapic::new(TSC_KHZ);
    wr(&mut apic, reg::LDR, 0xffff_ffff);
    wr(&mut apic, reg::DFR, 0x0000_0000);
    assert_eq!(rd(&mut apic, reg::LDR), 0xff00_0000);
    assert_eq!(rd(&mut apic, reg::DFR), 0x0fff_ffff);
}

#[test]
fn spiv_enable() {
    let mut apic = Lapic::new(TSC_KHZ);
    assert!(!apic.software_enabled());
    assert!(!apic.accept(0x40, false), "software-disabled APIC drops interrupts");
    assert_eq!(apic.pending(), None);
    wr(&mut apic, reg::SPIV, 0x1ff);
    assert!(apic.software_enabled());
    assert!(apic.accept(0x40, false));
    assert_eq!(apic.pending(), Some(0x40));
    wr(&mut apic, reg::SPIV, 0xff);
    assert_eq!(apic.pending(), None);
}

#[test]
fn software_disable_masks_lvts() {
    let mut apic = enabled();
    wr(&mut apic, reg::LVT_TIMER, 0x30);
    wr(&mut apic, reg::LVT_LINT1, 0x400);
    wr(&mut apic, reg::SPIV, 0xff);
    assert_eq!(rd(&mut apic, reg::LVT_TIMER), LVT_MASKED | 0x30);
    assert_eq!(rd(&mut apic, reg::LVT_LINT0), LVT_MASKED | 0x700);
    wr(&mut apic, reg::LVT_LINT1, 0x400);
    assert_eq!(rd(&mut apic, reg::LVT_LINT1), LVT_MASKED | 0x400, "mask stays while disabled");
    wr(&mut apic, reg::SPIV, 0x1ff);
    assert_eq!(rd(&mut apic, reg::LVT_TIMER), LVT_MASKED | 0x30, "enabling does not unmask");
}

#[test]
fn lvt_writable_bits() {
    let mut apic = enabled();
    for (reg, value) in [
        (reg::LVT_TIMER, 0x0007_10ff),
        (reg::LVT_THERMAL, 0x0001_07ff),
        (reg::LVT_LINT0, 0x0001_a7ff),
        (reg::LVT_ERROR, 0x0001_00ff),
    ] {
        wr(&mut apic, reg, u32::MAX);
        assert_eq!(rd(&mut apic, reg) & !(1 << 12), value & !(1 << 12), "register {reg:#x}");
        assert_eq!(rd(&mut apic, reg) & (1 << 12), 0, "delivery status idle");
    }
}

// ---- priorities, acceptance, EOI ----

#[test]
fn ppr_from_tpr_and_isr() {
    // (TPR, in-service vector, PPR): SDM 11.8.3.1.
    for (tpr, isr, ppr) in [
        (0x00, None, 0x00),
        (0x35, None, 0x35),
        (0x35, Some(0x20), 0x35),
        (0x35, Some(0x31), 0x35),
        (0x35, Some(0x47), 0x40),
        (0x00, Some(0xff), 0xf0),
    ] {
        let mut apic = enabled();
        if let Some(vector) = isr {
            apic.accept(vector, false);
            assert_eq!(apic.ack(), Some(vector));
        }
        wr(&mut apic, reg::TPR, tpr);
        assert_eq!(rd(&mut apic, reg::PPR), ppr, "TPR {tpr:#x} ISR {isr:?}");
        assert_eq!(apic.ppr(), ppr as u8);
    }
}

#[test]
fn pending_masked_by_priority_class() {
    // (TPR, requested vector, pending)
    for (tpr, vector, pending) in [
        (0x00, 0x10, Some(0x10)),
        (0x10, 0x1f, None),
        (0x10, 0x20, Some(0x20)),
        (0x4f, 0x4f, None),
        (0x4f, 0x50, Some(0x50)),
        (0xf0, 0xff, None),
        (0xef, 0xff, Some(0xff)),
    ] {
        let mut apic = enabled();
        wr(&mut apic, reg::TPR, tpr);
        apic.accept(vector, false);
        assert_eq!(apic.pending(), pending, "TPR {tpr:#x} vector {vector:#x}");
        assert_eq!(apic.ack(), pending);
    }
}

#[test]
fn set_tpr_is_the_tpr_register() {
    let mut apic = enabled();
    apic.set_tpr(0x50);
    assert_eq!(rd(&mut apic, reg::TPR), 0x50);
    assert_eq!(apic.tpr(), 0x50);
    apic.accept(0x45, false);
    assert_eq!(apic.pending(), None);
    apic.set_tpr(0);
    assert_eq!(apic.pending(), Some(0x45));
}

#[test]
fn accept_ack_eoi_nested() {
    let mut apic = enabled();
    apic.accept(0x40, false);
    apic.accept(0x41, false);
    assert_eq!(apic.ack(), Some(0x41));
    assert_eq!(apic.pending(), None, "same class as the one in service");
    apic.accept(0x80, false);
    assert_eq!(apic.ack(), Some(0x80), "higher class nests");
    assert_eq!(rd(&mut apic, reg::PPR), 0x80);
    assert_eq!(rd(&mut apic, reg::ISR + 0x40), 1);
    assert_eq!(rd(&mut apic, reg::ISR + 0x20), 1 << 1);
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::Eoi { vector: 0x80, level: false });
    assert_eq!(apic.pending(), None);
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::Eoi { vector: 0x41, level: false });
    assert_eq!(apic.ack(), Some(0x40));
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::Eoi { vector: 0x40, level: false });
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::None, "nothing in service");
    assert_eq!(apic.ack(), None);
}

#[test]
fn highest_vector_first() {
    let mut apic = enabled();
    for vector in [0x20, 0x90, 0x50, 0xff, 0x21] {
        apic.accept(vector, false);
    }
    let mut taken = Vec::new();
    while let Some(vector) = apic.ack() {
        taken.push(vector);
        wr(&mut apic, reg::EOI, 0);
    }
    assert_eq!(taken, [0xff, 0x90, 0x50, 0x21, 0x20]);
}

#[test]
fn level_triggered_eoi() {
    let mut apic = enabled();
    apic.accept(0x30, true);
    assert_eq!(rd(&mut apic, reg::TMR + 0x10), 1 << 16);
    assert_eq!(apic.ack(), Some(0x30));
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::Eoi { vector: 0x30, level: true });
    apic.accept(0x30, false);
    assert_eq!(rd(&mut apic, reg::TMR + 0x10), 0, "edge acceptance clears TMR");
    apic.ack();
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::Eoi { vector: 0x30, level: false });
}

#[test]
fn illegal_vectors_are_not_accepted() {
    for vector in [0, 2, 15] {
        let mut apic = enabled();
        assert!(!apic.accept(vector, false));
        assert_eq!(rd(&mut apic, reg::IRR), 0);
        assert_eq!(rd(&mut apic, reg::ESR), 0, "not visible before an ESR write");
        assert_eq!(esr(&mut apic), esr::RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(esr(&mut apic), 0, "the next write clears");
    }
    assert!(enabled().accept(16, false));
}

#[test]
fn error_lvt_interrupts() {
    let mut apic = enabled();
    wr(&mut apic, reg::LVT_ERROR, 0xfe);
    apic.accept(3, false);
    assert_eq!(apic.pending(), Some(0xfe));
}

#[test]
fn error_lvt_with_illegal_vector_terminates() {
    let mut apic = enabled();
    wr(&mut apic, reg::LVT_ERROR, 0x01);
    apic.accept(3, false);
    assert_eq!(apic.pending(), None);
    assert_eq!(esr(&mut apic), esr::RECEIVE_ILLEGAL_VECTOR);
}

// ---- IPIs ----

#[test]
fn icr_fixed_destinations() {
    const SELF: u32 = 1 << 18;
    const ALL: u32 = 2 << 18;
    const OTHERS: u32 = 3 << 18;
    const LOGICAL: u32 = 1 << 11;
    // (ICR high, ICR low, accepted by this CPU, dropped)
    for (high, low, accepted, dropped) in [
        (0, SELF | 0x40, true, false),
        (0x0500_0000, SELF | 0x40, true, false),
        (0, ALL | 0x40, true, false),
        (0, OTHERS | 0x40, false, true),
        (0, 0x40, true, false),
        (0xff00_0000, 0x40, true, false),
        (0x0100_0000, 0x40, false, true),
        (0x0100_0000, LOGICAL | 0x40, true, false),
        (0x0200_0000, LOGICAL | 0x40, false, true),
        (0xff00_0000, LOGICAL | 0x40, true, false),
        (0x0100_0000, 0x140, false, true),
        (0, 0x140, true, false),
    ] {
        let mut apic = enabled();
        wr(&mut apic, reg::LDR, 0x0100_0000);
        wr(&mut apic, reg::ICR_HIGH, high);
        let effect = wr(&mut apic, reg::ICR_LOW, low);
        let icr = (u64::from(high) << 32) | u64::from(low);
        assert_eq!(effect, if dropped { Effect::Dropped { icr } } else { Effect::None }, "ICR {icr:#x}");
        assert_eq!(irr_has(&mut apic, 0x40), accepted, "ICR {icr:#x}");
    }
}

#[test]
fn icr_logical_cluster_model() {
    for (ldr, dest, accepted) in [(0x21, 0x21, true), (0x21, 0x23, true), (0x21, 0x31, false), (0x21, 0x22, false)] {
        let mut apic = enabled();
        wr(&mut apic, reg::DFR, 0x0fff_ffff);
        wr(&mut apic, reg::LDR, ldr << 24);
        wr(&mut apic, reg::ICR_HIGH, dest << 24);
        wr(&mut apic, reg::ICR_LOW, (1 << 11) | 0x40);
        assert_eq!(irr_has(&mut apic, 0x40), accepted, "LDR {ldr:#x} destination {dest:#x}");
    }
}

#[test]
fn icr_level_trigger_sets_tmr() {
    let mut apic = enabled();
    wr(&mut apic, reg::ICR_LOW, (1 << 18) | (1 << 15) | (1 << 14) | 0x50);
    assert_eq!(apic.ack(), Some(0x50));
    assert_eq!(wr(&mut apic, reg::EOI, 0), Effect::Eoi { vector: 0x50, level: true });
}

#[test]
fn icr_delivery_status_reads_idle() {
    let mut apic = enabled();
    wr(&mut apic, reg::ICR_HIGH, 0x0100_0000);
    wr(&mut apic, reg::ICR_LOW, 0xffff_ffff);
    assert_eq!(rd(&mut apic, reg::ICR_LOW) & (1 << 12), 0);
    assert_eq!(rd(&mut apic, reg::ICR_LOW), 0x000c_cfff);
    assert_eq!(rd(&mut apic, reg::ICR_HIGH), 0x0100_0000);
}

#[test]
fn icr_special_delivery_modes() {
    const SELF: u32 = 1 << 18;
    const OTHERS: u32 = 3 << 18;
    for (low, effect) in [
        (SELF | 0x400, Effect::Nmi),
        (SELF | 0x200, Effect::Smi),
        (SELF | 0x4500, Effect::Init),
        (0x4500, Effect::Init),
        (SELF | 0x609, Effect::Startup { vector: 9 }),
        (OTHERS | 0x8500, Effect::None),
        (0x8500, Effect::None),
        (OTHERS | 0x4500, Effect::Dropped { icr: u64::from(OTHERS | 0x4500) }),
        (OTHERS | 0x0609, Effect::Dropped { icr: u64::from(OTHERS | 0x0609) }),
        (OTHERS | 0x0400, Effect::Dropped { icr: u64::from(OTHERS | 0x0400) }),
    ] {
        let mut apic = enabled();
        assert_eq!(wr(&mut apic, reg::ICR_LOW, low), effect, "ICR {low:#x}");
        assert_eq!(apic.pending(), None);
    }
}

#[test]
fn icr_illegal_vector_is_a_send_error() {
    let mut apic = enabled();
    assert_eq!(wr(&mut apic, reg::ICR_LOW, (1 << 18) | 0x0f), Effect::None);
    assert_eq!(apic.pending(), None);
    assert_eq!(esr(&mut apic), esr::SEND_ILLEGAL_VECTOR);
}

// ---- x2APIC and IA32_APIC_BASE ----

#[test]
fn x2apic_msrs_fault_outside_x2apic_mode() {
    let mut apic = enabled();
    for index in [0x802, 0x803, 0x808, 0x80b, 0x830, 0x83f] {
        assert_eq!(apic.rdmsr(index, 0), Err(Gp), "rdmsr {index:#x}");
        assert_eq!(apic.wrmsr(index, 0, 0), Err(Gp), "wrmsr {index:#x}");
    }
    assert_eq!(apic.rdmsr(0x1c, 0), Err(Gp));
    assert!(Lapic::handles_msr(0x1b) && Lapic::handles_msr(0x6e0) && Lapic::handles_msr(0x8ff));
    assert!(!Lapic::handles_msr(0x7ff) && !Lapic::handles_msr(0x900));
}

#[test]
fn x2apic_reads() {
    let mut apic = x2apic();
    for (index, result) in [
        (0x802, Ok(0)),
        (0x803, Ok(0x50014)),
        (0x808, Ok(0)),
        (0x809, Err(Gp)),
        (0x80a, Ok(0)),
        (0x80b, Err(Gp)),
        (0x80c, Err(Gp)),
        (0x80d, Ok(1)),
        (0x80e, Err(Gp)),
        (0x80f, Ok(0x1ff)),
        (0x810, Ok(0)),
        (0x828, Ok(0)),
        (0x82f, Err(Gp)),
        (0x830, Ok(0)),
        (0x831, Err(Gp)),
        (0x835, Ok(0x700)),
        (0x839, Ok(0)),
        (0x83e, Ok(0)),
        (0x83f, Err(Gp)),
        (0x840, Err(Gp)),
        (0x8ff, Err(Gp)),
    ] {
        assert_eq!(apic.rdmsr(index, 0), result, "rdmsr {index:#x}");
    }
}

#[test]
fn x2apic_writes() {
    for (index, value, ok) in [
        (0x802, 0, false),
        (0x803, 0, false),
        (0x808, 0x20, true),
        (0x808, 1 << 32, false),
        (0x80a, 0, false),
        (0x80b, 0, true),
        (0x80b, 1, false),
        (0x80d, 1, false),
        (0x80e, 0, false),
        (0x80f, 0x1ff, true),
        (0x810, 0, false),
        (0x820, 0, false),
        (0x828, 0, true),
        (0x828, 1, false),
        (0x830, 0x0000_0001_0000_4040, true),
        (0x830, 1 << 13, false),
        (0x830, 1 << 16, false),
        (0x830, 1 << 20, false),
        (0x831, 0, false),
        (0x832, 0x30, true),
        (0x838, 100, true),
        (0x839, 0, false),
        (0x83e, 0xb, true),
        (0x83f, 0x40, true),
        (0x83f, 1 << 32, false),
        (0x840, 0, false),
    ] {
        let mut apic = x2apic();
        assert_eq!(apic.wrmsr(index, value, 0).is_ok(), ok, "wrmsr {index:#x} <- {value:#x}");
    }
}

#[test]
fn x2apic_icr_is_one_64_bit_msr() {
    let mut apic = x2apic();
    assert_eq!(apic.wrmsr(0x830, (7 << 32) | 0x4040, 0), Ok(Effect::Dropped { icr: (7 << 32) | 0x4040 }));
    assert_eq!(apic.rdmsr(0x830, 0), Ok((7 << 32) | 0x4040));
    assert!(!irr_x2(&mut apic, 0x40));
    assert_eq!(apic.wrmsr(0x830, 0x4041, 0), Ok(Effect::None));
    assert!(irr_x2(&mut apic, 0x41));
    assert_eq!(apic.wrmsr(0x830, (0xffff_ffff << 32) | 0x4042, 0), Ok(Effect::None));
    assert!(irr_x2(&mut apic, 0x42), "broadcast");
    assert_eq!(apic.wrmsr(0x830, (1 << 32) | 0x4843, 0), Ok(Effect::None), "logical cluster 0, bit 0");
    assert!(irr_x2(&mut apic, 0x43));
    assert_eq!(apic.wrmsr(0x830, (0x1_0001 << 32) | 0x4844, 0), Ok(Effect::Dropped { icr: (0x1_0001 << 32) | 0x4844 }));
}

fn irr_x2(apic: &mut Lapic, vector: u8) -> bool {
    let word = apic.rdmsr(0x820 + u32::from(vector >> 5), 0).unwrap();
    word & (1 << (vector & 31)) != 0
}

#[test]
fn x2apic_self_ipi_and_eoi() {
    let mut apic = x2apic();
    assert_eq!(apic.wrmsr(0x83f, 0x61, 0), Ok(Effect::None));
    assert_eq!(apic.ack(), Some(0x61));
    assert_eq!(apic.rdmsr(0x80a, 0), Ok(0x60));
    assert_eq!(apic.wrmsr(0x80b, 0, 0), Ok(Effect::Eoi { vector: 0x61, level: false }));
    apic.wrmsr(0x83f, 0x05, 0).unwrap();
    apic.wrmsr(0x828, 0, 0).unwrap();
    assert_eq!(apic.rdmsr(0x828, 0), Ok(u64::from(esr::SEND_ILLEGAL_VECTOR)));
}

#[test]
fn x2apic_ldr_is_derived_from_the_id() {
    let mut apic = enabled();
    wr(&mut apic, reg::LDR, 0x8000_0000);
    wr(&mut apic, reg::ID, 0x0500_0000);
    apic.wrmsr(APIC_BASE_MSR, X2APIC_BASE, 0).unwrap();
    assert_eq!(apic.rdmsr(0x80d, 0), Ok(1));
    assert_eq!(apic.rdmsr(0x802, 0), Ok(0));
}

#[test]
fn x2apic_hides_mmio() {
    let mut apic = x2apic();
    assert_eq!(apic.mode(), Mode::X2Apic);
    assert_eq!(apic.mmio_base(), None);
    assert_eq!(apic.read(0x30, 4, 0), 0);
    apic.write(0x80, 4, 0x30, 0);
    assert_eq!(apic.rdmsr(0x808, 0), Ok(0));
}

#[test]
fn apic_base_transitions() {
    const DISABLED: u64 = DEFAULT_BASE | BASE_BSP;
    const INVALID: u64 = DEFAULT_BASE | BASE_EXTD | BASE_BSP;
    // (from, written, result, mode after): SDM 11.12.5, Figure 11-27.
    for (from, value, ok, mode) in [
        (XAPIC_BASE, X2APIC_BASE, true, Mode::X2Apic),
        (XAPIC_BASE, DISABLED, true, Mode::Disabled),
        (XAPIC_BASE, XAPIC_BASE, true, Mode::XApic),
        (XAPIC_BASE, INVALID, false, Mode::XApic),
        (X2APIC_BASE, XAPIC_BASE, false, Mode::X2Apic),
        (X2APIC_BASE, DISABLED, true, Mode::Disabled),
        (X2APIC_BASE, X2APIC_BASE, true, Mode::X2Apic),
        (X2APIC_BASE, INVALID, false, Mode::X2Apic),
        (DISABLED, XAPIC_BASE, true, Mode::XApic),
        (DISABLED, X2APIC_BASE, false, Mode::Disabled),
        (DISABLED, INVALID, false, Mode::Disabled),
        (DISABLED, DISABLED, true, Mode::Disabled),
        (XAPIC_BASE, XAPIC_BASE | 1, false, Mode::XApic),
        (XAPIC_BASE, XAPIC_BASE | 1 << 9, false, Mode::XApic),
        (XAPIC_BASE, XAPIC_BASE | 1 << 36, false, Mode::XApic),
    ] {
        let mut apic = Lapic::new(TSC_KHZ);
        for step in [DISABLED, XAPIC_BASE, X2APIC_BASE] {
            if apic.mode() != mode_of(from) {
                apic.wrmsr(APIC_BASE_MSR, step, 0).unwrap();
            }
        }
        assert_eq!(apic.mode(), mode_of(from));
        let result = apic.wrmsr(APIC_BASE_MSR, value, 0);
        assert_eq!(result.is_ok(), ok, "{from:#x} -> {value:#x}");
        assert_eq!(apic.mode(), mode, "{from:#x} -> {value:#x}");
    }
}

fn mode_of(base: u64) -> Mode {
    match base & (BASE_EN | BASE_EXTD) {
        0 => Mode::Disabled,
        BASE_EN => Mode::XApic,
        _ => Mode::X2Apic,
    }
}

#[test]
fn apic_base_relocates_and_keeps_bsp() {
    let mut apic = Lapic::new(TSC_KHZ);
    apic.wrmsr(APIC_BASE_MSR, 0xf_ffff_f000 | BASE_EN, 0).unwrap();
    assert_eq!(apic.rdmsr(APIC_BASE_MSR, 0), Ok(0xf_ffff_f000 | BASE_EN | BASE_BSP));
    assert_eq!(apic.mmio_base(), Some(0xf_ffff_f000));
}

#[test]
fn disabling_resets() {
    let mut apic = enabled();
    wr(&mut apic, reg::TPR, 0x20);
    wr(&mut apic, reg::LVT_TIMER, 0x30);
    wr(&mut apic, reg::INITIAL_COUNT, 1000);
    apic.accept(0x40, false);
    apic.wrmsr(APIC_BASE_MSR, DEFAULT_BASE, 0).unwrap();
    assert_eq!(apic.mode(), Mode::Disabled);
    assert_eq!(apic.mmio_base(), None);
    assert!(!apic.accept(0x50, false));
    assert_eq!(apic.read(0xf0, 4, 0), 0, "no MMIO while disabled");
    apic.wrmsr(APIC_BASE_MSR, XAPIC_BASE, 0).unwrap();
    assert_eq!(rd(&mut apic, reg::SPIV), 0xff, "software-disabled");
    assert_eq!(rd(&mut apic, reg::TPR), 0);
    assert_eq!(rd(&mut apic, reg::IRR + 0x20), 0);
    assert_eq!(rd(&mut apic, reg::LVT_TIMER), LVT_MASKED);
    assert_eq!(rd(&mut apic, reg::INITIAL_COUNT), 0);
    assert_eq!(apic.next_deadline(), None);
}

#[test]
fn init_keeps_id_and_base() {
    let mut apic = enabled();
    wr(&mut apic, reg::ID, 0x0200_0000);
    wr(&mut apic, reg::TPR, 0x20);
    apic.init();
    assert_eq!(rd(&mut apic, reg::ID), 0x0200_0000);
    assert_eq!(rd(&mut apic, reg::TPR), 0);
    assert_eq!(rd(&mut apic, reg::SPIV), 0xff);
    assert_eq!(apic.mode(), Mode::XApic);
}

#[test]
fn pic_routing() {
    let mut apic = Lapic::new(TSC_KHZ);
    assert!(apic.lint0_extint_enabled() && apic.accepts_pic_intr());
    wr(&mut apic, reg::LVT_LINT0, LVT_MASKED | 0x700);
    assert!(!apic.lint0_extint_enabled() && !apic.accepts_pic_intr());
    wr(&mut apic, reg::LVT_LINT0, 0x400);
    assert!(!apic.accepts_pic_intr(), "NMI mode");
    apic.wrmsr(APIC_BASE_MSR, DEFAULT_BASE, 0).unwrap();
    assert!(!apic.lint0_extint_enabled());
    assert!(apic.accepts_pic_intr(), "a disabled APIC lets INTR through");
}

// ---- timer ----

/// Timer in `mode` (0 one-shot, 1 periodic, 2 TSC-deadline) with vector 0x30 and divide 1.
fn timer(mode: u32) -> Lapic {
    let mut apic = enabled();
    wr(&mut apic, reg::DIVIDE_CONFIG, 0xb);
    wr(&mut apic, reg::LVT_TIMER, (mode << 17) | 0x30);
    apic
}

#[test]
fn one_shot_fires_exactly() {
    // (TSC kHz, start TSC, initial count, divide configuration, TSC ticks to expiry)
    for (tsc_khz, start, count, dcr, ticks) in [
        (2_000_000, 0, 1000, 0xb, 2000),
        (2_000_000, 10_000, 1000, 0x0, 4000),
        (2_000_000, 10_000, 1, 0xa, 256),
        (1_000_000, 5, 7, 0xb, 7),
        (2_500_000, 0, 3, 0xb, 8),
        (3_000_000, 300, 100, 0x3, 4800),
    ] {
        let mut apic = Lapic::new(tsc_khz);
        wr(&mut apic, reg::SPIV, 0x1ff);
        wr(&mut apic, reg::LVT_TIMER, 0x30);
        wr(&mut apic, reg::DIVIDE_CONFIG, dcr);
        apic.write(u64::from(reg::INITIAL_COUNT), 4, count, start);
        let deadline = start + ticks;
        assert_eq!(apic.next_deadline(), Some(deadline), "{tsc_khz} kHz, count {count}, DCR {dcr:#x}");
        apic.tick(deadline - 1);
        assert_eq!(apic.pending(), None);
        assert_ne!(apic.read(u64::from(reg::CURRENT_COUNT), 4, deadline - 1), 0);
        apic.tick(deadline);
        assert_eq!(apic.pending(), Some(0x30));
        assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, deadline), 0);
        assert_eq!(apic.next_deadline(), None, "one-shot disarms");
        assert_eq!(rd(&mut apic, reg::INITIAL_COUNT), count);
    }
}

#[test]
fn divide_values() {
    for (dcr, divide) in
        [(0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16), (0b1000, 32), (0b1001, 64), (0b1010, 128), (0b1011, 1)]
    {
        let mut apic = timer(0);
        wr(&mut apic, reg::DIVIDE_CONFIG, dcr | 0xf0);
        assert_eq!(rd(&mut apic, reg::DIVIDE_CONFIG), dcr);
        wr(&mut apic, reg::INITIAL_COUNT, 10);
        assert_eq!(apic.next_deadline(), Some(10 * divide * 2), "DCR {dcr:#b}");
    }
}

#[test]
fn current_count_decreases() {
    let mut apic = timer(0);
    wr(&mut apic, reg::DIVIDE_CONFIG, 0x1);
    apic.write(u64::from(reg::INITIAL_COUNT), 4, 1000, 100);
    // Divide 4: one count per 4 bus cycles, 8 TSC ticks.
    for (tsc, count) in [(100, 1000), (107, 1000), (108, 999), (116, 998), (100 + 8 * 999, 1), (100 + 8 * 1000, 0)] {
        assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, tsc), count, "TSC {tsc}");
    }
}

#[test]
fn earlier_time_does_not_rewind() {
    let mut apic = timer(0);
    apic.write(u64::from(reg::INITIAL_COUNT), 4, 1000, 1000);
    assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, 1200), 900);
    assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, 0), 900);
}

#[test]
fn initial_count_zero_stops() {
    let mut apic = timer(1);
    wr(&mut apic, reg::INITIAL_COUNT, 300_000);
    assert!(apic.next_deadline().is_some());
    wr(&mut apic, reg::INITIAL_COUNT, 0);
    assert_eq!(apic.next_deadline(), None);
    apic.tick(u64::MAX);
    assert_eq!(apic.pending(), None);
}

#[test]
fn periodic_rearms() {
    const COUNT: u64 = 300_000;
    let period = COUNT * 2;
    let mut apic = timer(1);
    wr(&mut apic, reg::INITIAL_COUNT, COUNT as u32);
    for n in 1..=3 {
        assert_eq!(apic.next_deadline(), Some(n * period));
        apic.tick(n * period - 1);
        assert_eq!(apic.pending(), None);
        apic.tick(n * period);
        assert_eq!(apic.ack(), Some(0x30), "period {n}");
        wr(&mut apic, reg::EOI, 0);
        assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, n * period), COUNT as u32, "reloaded");
    }
}

#[test]
fn periodic_many_missed_periods() {
    const COUNT: u64 = 300_000;
    let period = COUNT * 2;
    let mut apic = timer(1);
    wr(&mut apic, reg::INITIAL_COUNT, COUNT as u32);
    let late = 1_000_000 * period + period / 2;
    apic.tick(late);
    assert_eq!(apic.ack(), Some(0x30));
    wr(&mut apic, reg::EOI, 0);
    assert_eq!(apic.pending(), None, "one interrupt for the missed periods");
    assert_eq!(apic.next_deadline(), Some(1_000_001 * period));
    assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, late), COUNT as u32 / 2);
}

#[test]
fn periodic_tiny_count_is_clamped() {
    let mut apic = timer(1);
    wr(&mut apic, reg::INITIAL_COUNT, 1);
    let min_ticks = MIN_PERIOD_CYCLES * 2;
    assert_eq!(apic.next_deadline(), Some(min_ticks));
    let now = u64::MAX / 2;
    apic.tick(now);
    assert_eq!(apic.ack(), Some(0x30));
    let next = apic.next_deadline().unwrap();
    assert!(next > now && next - now <= min_ticks);
    apic.tick(now + 1);
    assert_eq!(apic.pending(), None);
}

#[test]
fn one_shot_to_periodic_keeps_counting() {
    let mut apic = timer(0);
    wr(&mut apic, reg::INITIAL_COUNT, 300_000);
    wr(&mut apic, reg::LVT_TIMER, (1 << 17) | 0x30);
    assert_eq!(apic.next_deadline(), Some(600_000));
    apic.tick(600_000);
    assert_eq!(apic.next_deadline(), Some(1_200_000));
}

#[test]
fn divide_change_keeps_the_count() {
    let mut apic = timer(0);
    wr(&mut apic, reg::INITIAL_COUNT, 1000);
    apic.write(u64::from(reg::DIVIDE_CONFIG), 4, 0x0, 400);
    assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, 400), 800);
    assert_eq!(apic.next_deadline(), Some(400 + 800 * 2 * 2));
}

#[test]
fn masked_timer_counts_without_delivering() {
    let mut apic = timer(0);
    wr(&mut apic, reg::LVT_TIMER, LVT_MASKED | 0x30);
    wr(&mut apic, reg::INITIAL_COUNT, 100);
    assert_eq!(apic.next_deadline(), None);
    assert_eq!(apic.read(u64::from(reg::CURRENT_COUNT), 4, 100), 50);
    apic.tick(200);
    assert_eq!(apic.pending(), None);
    apic.write(u64::from(reg::LVT_TIMER), 4, 0x30, 300);
    assert_eq!(apic.pending(), None, "the masked expiry is not delivered later");
    assert_eq!(apic.next_deadline(), None, "one-shot expired while masked");

    let mut apic = timer(1);
    wr(&mut apic, reg::LVT_TIMER, LVT_MASKED | (1 << 17) | 0x30);
    wr(&mut apic, reg::INITIAL_COUNT, 300_000);
    apic.write(u64::from(reg::LVT_TIMER), 4, (1 << 17) | 0x30, 1_500_000);
    assert_eq!(apic.pending(), None);
    assert_eq!(apic.next_deadline(), Some(1_800_000), "periodic kept counting");
}

#[test]
fn tsc_deadline() {
    let mut apic = timer(2);
    assert_eq!(apic.next_deadline(), None);
    apic.wrmsr(TSC_DEADLINE_MSR, 5000, 100).unwrap();
    assert_eq!(apic.rdmsr(TSC_DEADLINE_MSR, 100), Ok(5000));
    assert_eq!(apic.next_deadline(), Some(5000));
    apic.tick(4999);
    assert_eq!(apic.pending(), None);
    apic.tick(5000);
    assert_eq!(apic.pending(), Some(0x30));
    assert_eq!(apic.rdmsr(TSC_DEADLINE_MSR, 5000), Ok(0), "cleared when it fires");
    assert_eq!(apic.next_deadline(), None);
}

#[test]
fn tsc_deadline_disarm_and_past() {
    let mut apic = timer(2);
    apic.wrmsr(TSC_DEADLINE_MSR, 5000, 0).unwrap();
    apic.wrmsr(TSC_DEADLINE_MSR, 0, 0).unwrap();
    assert_eq!(apic.next_deadline(), None);
    apic.tick(10_000);
    assert_eq!(apic.pending(), None);
    apic.wrmsr(TSC_DEADLINE_MSR, 9000, 10_000).unwrap();
    assert_eq!(apic.pending(), Some(0x30), "a past deadline fires at once");
}

#[test]
fn tsc_deadline_mode_ignores_the_count_registers() {
    let mut apic = timer(2);
    wr(&mut apic, reg::INITIAL_COUNT, 1000);
    assert_eq!(rd(&mut apic, reg::INITIAL_COUNT), 0);
    assert_eq!(rd(&mut apic, reg::CURRENT_COUNT), 0);
    assert_eq!(apic.next_deadline(), None);
}

#[test]
fn tsc_deadline_outside_its_mode() {
    let mut apic = timer(0);
    apic.wrmsr(TSC_DEADLINE_MSR, 5000, 0).unwrap();
    assert_eq!(apic.rdmsr(TSC_DEADLINE_MSR, 0), Ok(0));
    assert_eq!(apic.next_deadline(), None);
}

#[test]
fn leaving_or_entering_tsc_deadline_mode_disarms() {
    let mut apic = timer(2);
    apic.wrmsr(TSC_DEADLINE_MSR, 5000, 0).unwrap();
    wr(&mut apic, reg::LVT_TIMER, 0x30);
    assert_eq!(apic.next_deadline(), None);
    wr(&mut apic, reg::LVT_TIMER, (2 << 17) | 0x30);
    assert_eq!(apic.rdmsr(TSC_DEADLINE_MSR, 0), Ok(0));
    apic.tick(10_000);
    assert_eq!(apic.pending(), None);

    let mut apic = timer(0);
    wr(&mut apic, reg::INITIAL_COUNT, 1000);
    wr(&mut apic, reg::LVT_TIMER, (2 << 17) | 0x30);
    assert_eq!(apic.next_deadline(), None);
    assert_eq!(rd(&mut apic, reg::INITIAL_COUNT), 0);
}

#[test]
fn x2apic_timer_msrs() {
    let mut apic = x2apic();
    apic.wrmsr(0x83e, 0xb, 0).unwrap();
    apic.wrmsr(0x832, 0x30, 0).unwrap();
    apic.wrmsr(0x838, 1000, 0).unwrap();
    assert_eq!(apic.rdmsr(0x839, 1000), Ok(500));
    apic.tick(2000);
    assert_eq!(apic.pending(), Some(0x30));
}

#[test]
fn x2apic_self_ipi_reserved_bits_are_gp() {
    let mut apic = Lapic::new(1_000_000);
    apic.wrmsr(APIC_BASE_MSR, DEFAULT_BASE | 1 << 11 | 1 << 10 | 1 << 8, 0).unwrap();
    for v in [0x100u64, 0xff00, 0xff00_0000] {
        assert_eq!(apic.wrmsr(0x83f, v, 0), Err(Gp), "SELF_IPI {v:#x}");
    }
    assert_eq!(apic.wrmsr(0x82f, 0, 0), Err(Gp), "no CMCI LVT");
}
