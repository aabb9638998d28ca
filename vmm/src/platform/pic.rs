//! The cascaded 8259A pair of the PC (Intel 8259A datasheet; QEMU `hw/intc/i8259.c`).
//!
//! Master at ports 0x20/0x21, slave at 0xA0/0xA1 on master input 2, edge/level control
//! registers (ELCR) at 0x4D0/0x4D1. Modelled: ICW1-ICW4 (vector base, single mode, ICW4 present,
//! level mode for all inputs, auto-EOI, special fully nested mode), OCW1 (IMR), OCW2
//! (non-specific and specific EOI, rotation, set priority), OCW3 (IRR/ISR read select, poll,
//! special mask), per-line edge or level triggering, and the spurious IRQ 7 / 15 of an INTA with
//! nothing valid pending. The slave's output reaches master input 2 as an edge-triggered line,
//! as on the PC board.
//!
//! Not modelled: 8080/8085 mode (ICW1 bit 2 and the ADI bit), buffered mode and the ICW3 wiring
//! (the PC cascade is fixed), and the initialization sequence's side effects on a chip left
//! half-initialized (a write to the command port in the middle of it is taken as an OCW, as
//! QEMU does). Ports outside those above read 0xFF and ignore writes.

/// Master command port (ICW1, OCW2, OCW3; reads IRR or ISR).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-ICW4, OCW1; reads IMR).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xA1;
/// Master edge/level control register (PIIX ELCR1).
pub const ELCR_MASTER: u16 = 0x4D0;
/// Slave edge/level control register (PIIX ELCR2).
pub const ELCR_SLAVE: u16 = 0x4D1;

/// The master input the slave's INT output is wired to.
const CASCADE_IRQ: u8 = 2;
/// No pending or in-service interrupt, in `Chip::priority` terms.
const NONE: u8 = 8;

/// One 8259A.
#[derive(Debug, Clone, Default)]
struct Chip {
    /// Input levels seen at the last `set_irq`, for edge detection.
    last_irr: u8,
    irr: u8,
    imr: u8,
    isr: u8,
    /// The IRQ number with the highest priority is `priority_add` (rotation).
    priority_add: u8,
    irq_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    /// 0: operational; 1..=3: the next data-port write is ICW2..ICW4.
    init_state: u8,
    init4: bool,
    single_mode: bool,
    /// ICW1 LTIM: every input level-triggered.
    ltim: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    elcr: u8,
    elcr_mask: u8,
}

impl Chip {
    fn new(elcr_mask: u8) -> Self {
        Chip { elcr_mask, ..Chip::default() }
    }

    fn level_triggered(&self, irq: u8) -> bool {
        self.ltim || self.elcr & (1 << irq) != 0
    }

    fn set_irq(&mut self, irq: u8, level: bool) {
        let mask = 1u8 << irq;
        if self.level_triggered(irq) {
            if level {
                self.irr |= mask;
            } else {
                self.irr &= !mask;
            }
        } else if level && self.last_irr & mask == 0 {
            self.irr |= mask;
        }
        if level {
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    /// Priority (0 highest) of the highest-priority bit in `bits`, or `NONE`.
    fn priority(&self, bits: u8) -> u8 {
        if bits == 0 {
            return NONE;
        }
        (0..8).find(|p| bits & (1 << ((p + self.priority_add) & 7)) != 0).unwrap_or(NONE)
    }

    /// The IRQ this chip would present at INTA, if any beats what is in service.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let requested = self.priority(self.irr & !self.imr);
        if requested == NONE {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        (requested < self.priority(in_service)).then_some((requested + self.priority_add) & 7)
    }

    fn intack(&mut self, irq: u8) {
        let mask = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        // A level-triggered request stays in IRR while its line is asserted.
        if !self.level_triggered(irq) {
            self.irr &= !mask;
        }
    }

    /// ICW1: everything but the ELCR and the asserted level lines is reset.
    fn icw1(&mut self, value: u8) {
        *self = Chip { irr: self.irr & self.elcr, elcr: self.elcr, elcr_mask: self.elcr_mask, ..Chip::default() };
        self.init_state = 1;
        self.init4 = value & 0x01 != 0;
        self.single_mode = value & 0x02 != 0;
        self.ltim = value & 0x08 != 0;
    }

    fn write_cmd(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            self.ocw2(value);
        }
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Clear / set rotate in automatic EOI mode.
            0 | 4 => self.rotate_on_auto_eoi = value & 0x80 != 0,
            // Non-specific EOI, optionally rotating.
            1 | 5 => {
                let p = self.priority(self.isr);
                if p != NONE {
                    let irq = (p + self.priority_add) & 7;
                    self.isr &= !(1 << irq);
                    if value >> 5 == 5 {
                        self.priority_add = (irq + 1) & 7;
                    }
                }
            }
            3 => self.isr &= !(1 << level),
            6 => self.priority_add = (level + 1) & 7,
            7 => {
                self.isr &= !(1 << level);
                self.priority_add = (level + 1) & 7;
            }
            // 2: no operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_state {
            1 => {
                self.irq_base = value & 0xF8;
                self.init_state = match (self.single_mode, self.init4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            // ICW3: the PC cascade wiring is fixed.
            2 => self.init_state = if self.init4 { 3 } else { 0 },
            3 => {
                self.special_fully_nested = value & 0x10 != 0;
                self.auto_eoi = value & 0x02 != 0;
                self.init_state = 0;
            }
            _ => self.imr = value,
        }
    }

    fn poll_read(&mut self, is_master: bool) -> u8 {
        match self.pending(is_master) {
            Some(irq) => {
                self.intack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read(&mut self, cmd_port: bool, is_master: bool) -> u8 {
        if self.poll {
            self.poll = false;
            self.poll_read(is_master)
        } else if !cmd_port {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// The master/slave 8259A pair.
#[derive(Debug, Clone)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// Both chips as after reset: uninitialized (vector base 0), nothing masked, all edge.
    pub fn new() -> Self {
        // ELCR bits for IRQ 0, 1, 2, 8 and 13 are reserved (PIIX datasheet).
        Pic { master: Chip::new(0xF8), slave: Chip::new(0xDE) }
    }

    /// Whether `port` belongs to the pair.
    pub fn claims(port: u16) -> bool {
        matches!(port, MASTER_CMD | MASTER_DATA | SLAVE_CMD | SLAVE_DATA | ELCR_MASTER | ELCR_SLAVE)
    }

    /// An 8-bit `in` from `port`; 0xFF for ports the pair does not decode.
    pub fn port_read(&mut self, port: u16) -> u8 {
        let value = match port {
            MASTER_CMD | MASTER_DATA => self.master.read(port == MASTER_CMD, true),
            SLAVE_CMD | SLAVE_DATA => self.slave.read(port == SLAVE_CMD, false),
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xFF,
        };
        // A poll read acknowledges like INTA does.
        self.update();
        value
    }

    /// An 8-bit `out` to `port`; ignored for ports the pair does not decode.
    pub fn port_write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD => self.master.write_cmd(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_CMD => self.slave.write_cmd(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.elcr = value & self.master.elcr_mask,
            ELCR_SLAVE => self.slave.elcr = value & self.slave.elcr_mask,
            _ => return,
        }
        self.update();
    }

    /// Drives ISA IRQ `line` (0-15; others are ignored) to `level`.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            0..=7 => self.master.set_irq(line, level),
            8..=15 => self.slave.set_irq(line - 8, level),
            _ => return,
        }
        self.update();
    }

    /// Whether ISA IRQ `line` is masked (its own IMR bit, or the cascade's for the slave's).
    pub fn masked(&self, line: u8) -> bool {
        match line {
            0..=7 => self.master.imr & (1 << line) != 0,
            _ => self.master.imr & (1 << CASCADE_IRQ) != 0 || self.slave.imr & (1 << (line & 7)) != 0,
        }
    }

    /// Whether the master asserts INTR to the CPU.
    pub fn output(&self) -> bool {
        self.master.pending(true).is_some()
    }

    /// The INTA cycle: the vector for the highest-priority request, moved from IRR to ISR unless
    /// in auto-EOI. With nothing valid pending (the request went away or was masked after INTR
    /// was sampled) the chip answers with IRQ 7 of the master, or IRQ 15 when the master's
    /// request was the cascade, and sets no ISR bit.
    pub fn ack(&mut self) -> u8 {
        let vector = match self.master.pending(true) {
            Some(CASCADE_IRQ) => {
                self.master.intack(CASCADE_IRQ);
                let irq = match self.slave.pending(false) {
                    Some(irq) => {
                        self.slave.intack(irq);
                        irq
                    }
                    None => 7,
                };
                self.slave.irq_base | irq
            }
            Some(irq) => {
                self.master.intack(irq);
                self.master.irq_base | irq
            }
            None => self.master.irq_base | 7,
        };
        self.update();
        vector
    }

    /// Propagates the slave's INT output to master input 2.
    fn update(&mut self) {
        let slave_out = self.slave.pending(false).is_some();
        self.master.set_irq(CASCADE_IRQ, slave_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BIOS-style programming: master at 0x20, slave at 0x28, ICW4 with 8086 mode.
    fn init(pic: &mut Pic, master_base: u8, slave_base: u8, icw4: u8) {
        pic.port_write(MASTER_CMD, 0x11);
        pic.port_write(MASTER_DATA, master_base);
        pic.port_write(MASTER_DATA, 0x04);
        pic.port_write(MASTER_DATA, icw4);
        pic.port_write(SLAVE_CMD, 0x11);
        pic.port_write(SLAVE_DATA, slave_base);
        pic.port_write(SLAVE_DATA, 0x02);
        pic.port_write(SLAVE_DATA, icw4);
    }

    fn pc_pic() -> Pic {
        let mut pic = Pic::new();
        init(&mut pic, 0x20, 0x28, 0x01);
        pic
    }

    fn pulse(pic: &mut Pic, line: u8) {
        pic.set_irq(line, true);
        pic.set_irq(line, false);
    }

    const EOI: u8 = 0x20;

    #[test]
    fn init_sets_bases_and_clears_mask() {
        let mut pic = Pic::new();
        pic.port_write(MASTER_DATA, 0xAB);
        init(&mut pic, 0x20, 0x28, 0x01);
        assert_eq!(pic.port_read(MASTER_DATA), 0);
        pulse(&mut pic, 3);
        assert!(pic.output());
        assert_eq!(pic.ack(), 0x23);
    }

    #[test]
    fn vector_base_ignores_low_bits() {
        let mut pic = Pic::new();
        init(&mut pic, 0x27, 0x2F, 0x01);
        pulse(&mut pic, 1);
        assert_eq!(pic.ack(), 0x21);
    }

    #[test]
    fn imr_masks_and_reads_back() {
        let mut pic = pc_pic();
        pic.port_write(MASTER_DATA, 0x10);
        assert_eq!(pic.port_read(MASTER_DATA), 0x10);
        pulse(&mut pic, 4);
        assert!(!pic.output());
        pic.port_write(MASTER_DATA, 0);
        assert!(pic.output(), "the edge stays latched in IRR while masked");
        assert_eq!(pic.ack(), 0x24);
    }

    #[test]
    fn priority_lowest_number_first() {
        let mut pic = pc_pic();
        pulse(&mut pic, 5);
        pulse(&mut pic, 1);
        assert_eq!(pic.ack(), 0x21);
        // IRQ 5 waits for the EOI of the higher-priority IRQ 1.
        assert!(!pic.output());
        pic.port_write(MASTER_CMD, EOI);
        assert_eq!(pic.ack(), 0x25);
    }

    #[test]
    fn higher_priority_nests() {
        let mut pic = pc_pic();
        pulse(&mut pic, 5);
        assert_eq!(pic.ack(), 0x25);
        pulse(&mut pic, 1);
        assert!(pic.output());
        assert_eq!(pic.ack(), 0x21);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x22);
        // A non-specific EOI ends the highest-priority one in service.
        pic.port_write(MASTER_CMD, EOI);
        assert_eq!(pic.port_read(MASTER_CMD), 0x20);
    }

    #[test]
    fn cascade_through_irq2() {
        let mut pic = pc_pic();
        pulse(&mut pic, 12);
        assert!(pic.output());
        assert_eq!(pic.ack(), 0x2C);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        pic.port_write(SLAVE_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x04);
        assert_eq!(pic.port_read(SLAVE_CMD), 0x10);
        pic.port_write(SLAVE_CMD, EOI);
        pic.port_write(MASTER_CMD, EOI);
        assert_eq!(pic.port_read(MASTER_CMD), 0);
        assert_eq!(pic.port_read(SLAVE_CMD), 0);
        assert!(!pic.output());
    }

    #[test]
    fn second_slave_irq_after_both_eois() {
        let mut pic = pc_pic();
        pulse(&mut pic, 14);
        pulse(&mut pic, 9);
        assert_eq!(pic.ack(), 0x29);
        assert!(!pic.output(), "IRQ2 is in service on the master");
        pic.port_write(SLAVE_CMD, EOI);
        assert!(!pic.output());
        pic.port_write(MASTER_CMD, EOI);
        assert!(pic.output());
        assert_eq!(pic.ack(), 0x2E);
    }

    #[test]
    fn slave_masked_by_master_irq2() {
        let mut pic = pc_pic();
        pic.port_write(MASTER_DATA, 0x04);
        pulse(&mut pic, 10);
        assert!(!pic.output());
        pic.port_write(MASTER_DATA, 0);
        assert_eq!(pic.ack(), 0x2A);
    }

    #[test]
    fn specific_eoi_clears_named_level() {
        let mut pic = pc_pic();
        pulse(&mut pic, 6);
        assert_eq!(pic.ack(), 0x26);
        pulse(&mut pic, 3);
        assert_eq!(pic.ack(), 0x23);
        pic.port_write(MASTER_CMD, 0x60 | 6);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x08);
    }

    #[test]
    fn spurious_irq7_when_request_vanishes() {
        let mut pic = pc_pic();
        pic.port_write(ELCR_MASTER, 0x08);
        pic.set_irq(3, true);
        assert!(pic.output());
        pic.set_irq(3, false);
        assert_eq!(pic.ack(), 0x27);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0, "a spurious INTA sets no ISR bit");
    }

    #[test]
    fn spurious_irq7_with_nothing_pending() {
        let mut pic = pc_pic();
        assert!(!pic.output());
        assert_eq!(pic.ack(), 0x27);
    }

    #[test]
    fn spurious_irq15_when_slave_request_vanishes() {
        let mut pic = pc_pic();
        pulse(&mut pic, 11);
        assert!(pic.output());
        // Masked on the slave after the master latched the cascade edge.
        pic.port_write(SLAVE_DATA, 0x08);
        assert_eq!(pic.ack(), 0x2F);
        pic.port_write(SLAVE_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(SLAVE_CMD), 0);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x04, "the master did acknowledge IRQ2");
    }

    #[test]
    fn edge_latches_once_per_rising_edge() {
        let mut pic = pc_pic();
        pic.set_irq(4, true);
        assert_eq!(pic.ack(), 0x24);
        pic.port_write(MASTER_CMD, EOI);
        pic.set_irq(4, true);
        assert!(!pic.output(), "still high: no new edge");
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert_eq!(pic.ack(), 0x24);
    }

    #[test]
    fn level_line_reasserts_after_eoi() {
        let mut pic = pc_pic();
        pic.port_write(ELCR_SLAVE, 0x08);
        assert_eq!(pic.port_read(ELCR_SLAVE), 0x08);
        pic.set_irq(11, true);
        assert_eq!(pic.ack(), 0x2B);
        pic.port_write(SLAVE_CMD, EOI);
        pic.port_write(MASTER_CMD, EOI);
        assert!(pic.output(), "the line is still asserted");
        assert_eq!(pic.ack(), 0x2B);
        pic.set_irq(11, false);
        pic.port_write(SLAVE_CMD, EOI);
        pic.port_write(MASTER_CMD, EOI);
        assert!(!pic.output());
    }

    #[test]
    fn ltim_makes_every_input_level() {
        let mut pic = Pic::new();
        pic.port_write(MASTER_CMD, 0x19);
        pic.port_write(MASTER_DATA, 0x08);
        pic.port_write(MASTER_DATA, 0x04);
        pic.port_write(MASTER_DATA, 0x01);
        pic.set_irq(1, true);
        assert_eq!(pic.ack(), 0x09);
        pic.port_write(MASTER_CMD, EOI);
        assert_eq!(pic.ack(), 0x09);
    }

    #[test]
    fn elcr_reserved_bits_read_zero() {
        let mut pic = Pic::new();
        pic.port_write(ELCR_MASTER, 0xFF);
        pic.port_write(ELCR_SLAVE, 0xFF);
        assert_eq!(pic.port_read(ELCR_MASTER), 0xF8);
        assert_eq!(pic.port_read(ELCR_SLAVE), 0xDE);
    }

    const OCW3_READ_IRR: u8 = 0x0A;
    const OCW3_READ_ISR: u8 = 0x0B;

    #[test]
    fn ocw3_selects_irr_or_isr() {
        let mut pic = pc_pic();
        pulse(&mut pic, 0);
        pulse(&mut pic, 6);
        assert_eq!(pic.port_read(MASTER_CMD), 0x41, "IRR is read after init");
        assert_eq!(pic.ack(), 0x20);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x01);
        assert_eq!(pic.port_read(MASTER_CMD), 0x01, "the selection sticks");
        pic.port_write(MASTER_CMD, OCW3_READ_IRR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x40);
        // OCW3 without RR leaves the selection alone.
        pic.port_write(MASTER_CMD, 0x08);
        assert_eq!(pic.port_read(MASTER_CMD), 0x40);
    }

    #[test]
    fn poll_mode_acknowledges() {
        let mut pic = pc_pic();
        pulse(&mut pic, 5);
        pic.port_write(MASTER_CMD, 0x0C);
        assert_eq!(pic.port_read(MASTER_CMD), 0x85);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0x20);
        pic.port_write(MASTER_CMD, EOI);
        pic.port_write(MASTER_DATA, 0x80);
        pic.port_write(MASTER_CMD, 0x0C);
        assert_eq!(pic.port_read(MASTER_DATA), 0, "nothing pending");
        assert_eq!(pic.port_read(MASTER_DATA), 0x80, "poll lasts one read: IMR again");
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut pic = Pic::new();
        init(&mut pic, 0x20, 0x28, 0x03);
        pulse(&mut pic, 5);
        assert_eq!(pic.ack(), 0x25);
        pic.port_write(MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(pic.port_read(MASTER_CMD), 0);
        pulse(&mut pic, 6);
        assert_eq!(pic.ack(), 0x26, "no EOI needed");
    }

    #[test]
    fn rotate_in_auto_eoi() {
        let mut pic = Pic::new();
        init(&mut pic, 0x20, 0x28, 0x03);
        pic.port_write(MASTER_CMD, 0x80);
        pulse(&mut pic, 1);
        assert_eq!(pic.ack(), 0x21);
        pulse(&mut pic, 1);
        pulse(&mut pic, 3);
        assert_eq!(pic.ack(), 0x23, "IRQ 1 rotated to the lowest priority");
        pic.port_write(MASTER_CMD, 0x00);
        assert_eq!(pic.ack(), 0x21);
        pulse(&mut pic, 3);
        pulse(&mut pic, 5);
        assert_eq!(pic.ack(), 0x25, "rotation off: IRQ 3, the last rotated, stays lowest");
        assert_eq!(pic.ack(), 0x23);
    }

    #[test]
    fn rotate_on_nonspecific_eoi() {
        let mut pic = pc_pic();
        pulse(&mut pic, 1);
        assert_eq!(pic.ack(), 0x21);
        // Rotate: IRQ 1 becomes the lowest priority, IRQ 2 the highest.
        pic.port_write(MASTER_CMD, 0xA0);
        pulse(&mut pic, 1);
        pulse(&mut pic, 3);
        assert_eq!(pic.ack(), 0x23);
    }

    #[test]
    fn set_priority_command() {
        let mut pic = pc_pic();
        // IRQ 4 lowest, so IRQ 5 highest.
        pic.port_write(MASTER_CMD, 0xC0 | 4);
        pulse(&mut pic, 0);
        pulse(&mut pic, 6);
        assert_eq!(pic.ack(), 0x26);
    }

    #[test]
    fn special_mask_lets_lower_priority_in() {
        let mut pic = pc_pic();
        pulse(&mut pic, 1);
        assert_eq!(pic.ack(), 0x21);
        pulse(&mut pic, 5);
        assert!(!pic.output());
        pic.port_write(MASTER_DATA, 0x02);
        pic.port_write(MASTER_CMD, 0x68);
        assert!(pic.output());
        assert_eq!(pic.ack(), 0x25);
        pic.port_write(MASTER_CMD, 0x48);
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3() {
        let mut pic = Pic::new();
        pic.port_write(MASTER_CMD, 0x12);
        pic.port_write(MASTER_DATA, 0x40);
        pic.port_write(MASTER_DATA, 0x10);
        assert_eq!(pic.port_read(MASTER_DATA), 0x10, "the third write is OCW1");
    }

    #[test]
    fn reinit_midway_restarts_sequence() {
        let mut pic = Pic::new();
        pic.port_write(MASTER_CMD, 0x11);
        pic.port_write(MASTER_DATA, 0x50);
        pic.port_write(MASTER_CMD, 0x11);
        pic.port_write(MASTER_DATA, 0x30);
        pic.port_write(MASTER_DATA, 0x04);
        pic.port_write(MASTER_DATA, 0x01);
        pulse(&mut pic, 0);
        assert_eq!(pic.ack(), 0x30);
    }

    #[test]
    fn mask_all_as_kvm_unit_tests_does() {
        let mut pic = pc_pic();
        pic.port_write(MASTER_DATA, 0xFF);
        pic.port_write(SLAVE_DATA, 0xFF);
        for line in 0..16 {
            pulse(&mut pic, line);
        }
        assert!(!pic.output());
    }

    #[test]
    fn garbage_is_total() {
        let mut pic = Pic::new();
        for port in [0x1F, 0x22, 0x9F, 0xA2, 0x4CF, 0x4D2, 0xFFFF] {
            assert!(!Pic::claims(port));
            assert_eq!(pic.port_read(port), 0xFF);
            pic.port_write(port, 0x11);
        }
        pic.set_irq(16, true);
        pic.set_irq(255, true);
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let port =
                [MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA, ELCR_MASTER, ELCR_SLAVE][(seed >> 8) as usize % 6];
            let value = (seed >> 16) as u8;
            match seed % 4 {
                0 => pic.port_write(port, value),
                1 => {
                    pic.port_read(port);
                }
                2 => pic.set_irq(value % 16, value & 0x10 != 0),
                _ => {
                    pic.output();
                    pic.ack();
                }
            }
        }
    }
}
