//! What a PC BIOS leaves behind for the kernel it boots, for images that rely on it
//! (`--firmware bios`, the QEMU front's default; QEMU's SeaBIOS is the reference): the real-mode
//! interrupt vector table with handlers that acknowledge the 8259s, both 8259s initialized
//! (vectors 0x08-0x0F and 0x70-0x77, IRQ 0 and the cascade unmasked) and the PIT's counter 0
//! in mode 2 at 18.2 Hz (count 65536). No BIOS services (INT 10h, 13h, 15h, ...) are offered:
//! their vectors point at a bare IRET.

use crate::platform::pic::{MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA};
use crate::platform::pit::{CONTROL, COUNTER0};

/// What runs before the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// The machine as a multiboot loader leaves it, and nothing else (nestbed's default).
    #[default]
    None,
    /// The interrupt controllers, timer and vector table as a PC BIOS leaves them.
    Bios,
}

/// The handlers' segment: the BIOS area, which the multiboot memory map reports reserved.
const SEGMENT: u16 = 0xF000;
/// Physical address of the first handler.
pub const HANDLERS: u64 = (SEGMENT as u64) << 4;

/// `push ax; mov al, 0x20; out 0x20, al; pop ax; iret`: non-specific EOI to the master.
const MASTER_EOI: &[u8] = &[0x50, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0xCF];
/// The same, EOI to the slave and then the master.
const SLAVE_EOI: &[u8] = &[0x50, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF];
const IRET: &[u8] = &[0xCF];

/// The port writes of the BIOS's 8259 and PIT set-up, in order.
pub const PORT_WRITES: &[(u16, u8)] = &[
    // ICW1 (edge, cascade, ICW4 follows), ICW2 (vector base), ICW3 (cascade on IRQ 2), ICW4 (8086).
    (MASTER_CMD, 0x11),
    (SLAVE_CMD, 0x11),
    (MASTER_DATA, 0x08),
    (SLAVE_DATA, 0x70),
    (MASTER_DATA, 0x04),
    (SLAVE_DATA, 0x02),
    (MASTER_DATA, 0x01),
    (SLAVE_DATA, 0x01),
    // OCW1: everything masked but the timer and the cascade.
    (MASTER_DATA, 0xFA),
    (SLAVE_DATA, 0xFF),
    // Counter 0, LSB then MSB, mode 2, count 0 (65536: 18.2 Hz).
    (CONTROL, 0x34),
    (COUNTER0, 0),
    (COUNTER0, 0),
];

/// The interrupt vector table (256 far pointers, offset then segment, at physical 0) and the
/// handlers it points at (at `HANDLERS`).
pub fn ivt_and_handlers() -> ([u8; 1024], Vec<u8>) {
    let handlers = [IRET, MASTER_EOI, SLAVE_EOI].concat();
    let offset = |h: &[u8]| match h.len() {
        1 => 0u16,
        n if n == MASTER_EOI.len() => IRET.len() as u16,
        _ => (IRET.len() + MASTER_EOI.len()) as u16,
    };
    let mut ivt = [0u8; 1024];
    for (vector, entry) in ivt.chunks_exact_mut(4).enumerate() {
        let handler = match vector {
            0x08..=0x0F => MASTER_EOI,
            0x70..=0x77 => SLAVE_EOI,
            _ => IRET,
        };
        entry[..2].copy_from_slice(&offset(handler).to_le_bytes());
        entry[2..].copy_from_slice(&SEGMENT.to_le_bytes());
    }
    (ivt, handlers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(ivt: &[u8; 1024], handlers: &[u8], vector: usize) -> Vec<u8> {
        let e = &ivt[vector * 4..vector * 4 + 4];
        let (off, seg) = (u16::from_le_bytes([e[0], e[1]]), u16::from_le_bytes([e[2], e[3]]));
        let phys = (u64::from(seg) << 4) + u64::from(off) - HANDLERS;
        let rest = &handlers[phys as usize..];
        let end = rest.iter().position(|&b| b == 0xCF).unwrap();
        rest[..=end].to_vec()
    }

    #[test]
    fn irq_vectors_acknowledge_their_8259s_and_the_rest_return() {
        let (ivt, handlers) = ivt_and_handlers();
        assert_eq!(handler(&ivt, &handlers, 0x08), MASTER_EOI);
        assert_eq!(handler(&ivt, &handlers, 0x0F), MASTER_EOI);
        assert_eq!(handler(&ivt, &handlers, 0x73), SLAVE_EOI);
        assert_eq!(handler(&ivt, &handlers, 0x10), IRET);
        assert_eq!(handler(&ivt, &handlers, 0xFF), IRET);
    }

    #[test]
    fn the_set_up_leaves_the_pic_and_pit_as_the_bios_does() {
        let mut pic = crate::platform::pic::Pic::new();
        let mut pit = crate::platform::pit::Pit::new(1_000_000, 0);
        for &(port, value) in PORT_WRITES {
            if crate::platform::pic::Pic::claims(port) {
                pic.port_write(port, value);
            } else {
                pit.port_write(port, value, 0);
            }
        }
        assert!(!pic.masked(0) && pic.masked(1) && pic.masked(11));
        pic.set_irq(0, true);
        assert_eq!(pic.ack(), 0x08);
        // 65536 PIT clocks at 1.193182 MHz: 54.9 ms of a 1 GHz TSC.
        assert_eq!(pit.next_deadline(), Some(54_925_402));
    }
}
