//! One guest machine on KVM: memory, the multiboot loader, devices and the vCPU.
//!
//! `Vm` owns a KVM VM and its memslots; `Vcpu` wraps one KVM vCPU whose registers move
//! through `kvm_run->s.regs` (sync regs), so the common exit path issues no vCPU ioctl besides
//! `KVM_RUN` (every vCPU ioctl costs about half an exit: README, "Host facts").

pub mod acpi;
pub mod arch_rules;
pub mod bios;
pub mod devices;
pub mod idt;
pub mod insn;
pub mod loader;
pub mod memory;
pub mod paging;
pub mod probe;
pub mod vcpu;
pub mod vm;

pub use memory::GuestRam;
pub use vcpu::{RawExit, Vcpu};
pub use vm::Vm;
