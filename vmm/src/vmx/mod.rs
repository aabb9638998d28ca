//! The virtual VMX as a pure model: no KVM types, testable without /dev/kvm.

pub mod bits;
pub mod caps;
pub mod checks;
pub mod cpu;
#[cfg(test)]
mod cpu_fuzz;
pub mod decode;
pub mod ept;
pub mod events;
pub mod evmcs;
pub mod exit_info;
pub mod exits;
pub mod fields;
pub mod guest_levels;
pub mod msr_list;
pub mod route;
pub mod sensitive;
pub mod state;
pub mod vmcs;
