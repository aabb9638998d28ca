//! The machine state a multiboot loader hands over (Multiboot 0.6.96, 3.2): 32-bit protected
//! mode, flat 4 GiB segments, paging off, EAX = 0x2BADB002, EBX = the information structure.

use kvm_bindings::kvm_segment;

use crate::machine::loader::{BootEntry, BOOTLOADER_MAGIC};
use crate::machine::Vcpu;

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
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
    }
}

pub fn set_entry_state(vcpu: &mut Vcpu, boot: &BootEntry) {
    let s = vcpu.sregs_mut();
    s.cs = flat(0x10, 0xb);
    for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
        *seg = flat(0x18, 0x3);
    }
    s.tr = kvm_segment { limit: 0xffff, type_: 0xb, present: 1, ..Default::default() };
    s.ldt = kvm_segment { type_: 0x2, present: 1, unusable: 1, ..Default::default() };
    s.cr0 = 0x11; // PE | ET
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    let r = vcpu.regs_mut();
    *r = Default::default();
    r.rip = boot.entry;
    r.rflags = 0x2;
    r.rax = u64::from(BOOTLOADER_MAGIC);
    r.rbx = boot.info;
}
