//! nestbed: a KVM-based VMM that gives its L1 guests a virtual Intel VMX.
//!
//! One folder per concern: `machine` (one KVM guest: memory, boot, devices, vCPU), `runner`
//! (the run loop and the path of one exit), `vmx` (the pure VMX model, no KVM types),
//! `nested` (drives the model with the L1 and L2 vCPUs), `script` (Rhai on every exit), `gdb`
//! (the remote stub), `trace` (JSON lines, statistics, diff and report), `scenario` (scenario
//! files: a guest run with its expected exit code, console and golden trace), `platform` (the PC
//! devices beside the serial port, as pure models), `qemu` (the QEMU-compatible command line that
//! kvm-unit-tests' runner drives).

pub mod error;
pub mod exit;
pub mod gdb;
pub mod guests;
pub mod machine;
pub mod msr;
pub mod nested;
pub mod patch;
pub mod platform;
pub mod qemu;
pub mod runner;
pub mod scenario;
pub mod script;
pub mod stdio;
pub mod suggest;
pub mod trace;
pub mod vmx;
