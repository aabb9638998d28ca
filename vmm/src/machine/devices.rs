//! Port-I/O devices: a 16550 UART at 0x3f8 (vm-superio; its LSR always reports the
//! transmitter empty, so polled drivers never wait), the debug-exit port 0xf4 and, with QEMU's
//! exit convention, the Bochs shutdown port 0x8900. Other ports read as all ones and ignore
//! writes.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

pub const COM1: u16 = 0x3f8;
pub const DEBUG_EXIT: u16 = 0xf4;
/// Bochs' (and old QEMU's) power-off port: writing "Shutdown" byte by byte powers off.
pub const BOCHS_SHUTDOWN: u16 = 0x8900;
const SHUTDOWN: &[u8; 8] = b"Shutdown";

/// What the guest's exit writes mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitConvention {
    /// A write to 0xf4 ends the run with the byte written as the exit status.
    #[default]
    Nestbed,
    /// QEMU's isa-debug-exit at 0xf4: status `(value << 1) | 1` (8 bits of it, as the host
    /// keeps); "Shutdown" written to 0x8900 powers off with status 0.
    Qemu,
}

/// The UART's interrupt line is not wired (guests poll).
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// What a port write did to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEffect {
    None,
    /// The guest wrote its exit code to the debug-exit port.
    Exit(u8),
    /// The console's destination failed (its reader went away, a full disk): the byte is lost.
    ConsoleFailed(std::io::ErrorKind),
}

pub struct Devices {
    serial: Serial<NoIrq, NoEvents, Box<dyn Write + Send>>,
    exit: ExitConvention,
    /// How much of "Shutdown" the guest has written to 0x8900.
    shutdown_index: usize,
}

impl Devices {
    pub fn new(console: Box<dyn Write + Send>) -> Self {
        Devices { serial: Serial::new(NoIrq, console), exit: ExitConvention::Nestbed, shutdown_index: 0 }
    }

    pub fn with_exit_convention(mut self, exit: ExitConvention) -> Self {
        self.exit = exit;
        self
    }

    pub fn handles(port: u16) -> bool {
        (COM1..COM1 + 8).contains(&port) || port == DEBUG_EXIT
    }

    pub fn write(&mut self, port: u16, size: u8, data: u64) -> PortEffect {
        match port {
            p if (COM1..COM1 + 8).contains(&p) => match self.serial.write((p - COM1) as u8, data as u8) {
                Err(vm_superio::serial::Error::IOError(e)) => PortEffect::ConsoleFailed(e.kind()),
                _ => PortEffect::None,
            },
            DEBUG_EXIT => match self.exit {
                ExitConvention::Nestbed => PortEffect::Exit(data as u8),
                ExitConvention::Qemu => {
                    let value = data & (u64::MAX >> (64 - 8 * u32::from(size.clamp(1, 8))));
                    PortEffect::Exit(((value << 1) | 1) as u8)
                }
            },
            BOCHS_SHUTDOWN if self.exit == ExitConvention::Qemu => {
                if data as u8 == SHUTDOWN[self.shutdown_index] {
                    self.shutdown_index += 1;
                } else {
                    self.shutdown_index = usize::from(data as u8 == SHUTDOWN[0]);
                }
                if self.shutdown_index == SHUTDOWN.len() {
                    self.shutdown_index = 0;
                    return PortEffect::Exit(0);
                }
                PortEffect::None
            }
            _ => {
                tracing::debug!(
                    port = format_args!("{port:#x}"),
                    size,
                    data = format_args!("{data:#x}"),
                    "write to unhandled port ignored"
                );
                PortEffect::None
            }
        }
    }

    pub fn read(&mut self, port: u16, size: u8) -> u64 {
        match port {
            p if (COM1..COM1 + 8).contains(&p) => u64::from(self.serial.read((p - COM1) as u8)),
            _ => {
                tracing::debug!(port = format_args!("{port:#x}"), size, "read from unhandled port: all ones");
                u64::MAX >> (64 - 8 * u32::from(size.clamp(1, 8)))
            }
        }
    }

    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(exit: ExitConvention) -> Devices {
        Devices::new(Box::new(std::io::sink())).with_exit_convention(exit)
    }

    #[test]
    fn nestbed_exit_passes_the_byte() {
        let mut d = devices(ExitConvention::Nestbed);
        assert_eq!(d.write(DEBUG_EXIT, 4, 0x1_0003), PortEffect::Exit(3));
        for b in SHUTDOWN {
            assert_eq!(d.write(BOCHS_SHUTDOWN, 1, u64::from(*b)), PortEffect::None);
        }
    }

    #[test]
    fn qemu_debug_exit_shifts_and_sets_bit_0() {
        let mut d = devices(ExitConvention::Qemu);
        assert_eq!(d.write(DEBUG_EXIT, 4, 0), PortEffect::Exit(1));
        assert_eq!(d.write(DEBUG_EXIT, 4, 1), PortEffect::Exit(3));
        assert_eq!(d.write(DEBUG_EXIT, 4, 0x7f), PortEffect::Exit(0xff));
        assert_eq!(d.write(DEBUG_EXIT, 4, 0x80), PortEffect::Exit(1));
        assert_eq!(d.write(DEBUG_EXIT, 1, 0x1_0102), PortEffect::Exit(5));
    }

    #[test]
    fn qemu_shutdown_port_needs_the_whole_word() {
        let mut d = devices(ExitConvention::Qemu);
        for b in b"ShutShutdow" {
            assert_eq!(d.write(BOCHS_SHUTDOWN, 1, u64::from(*b)), PortEffect::None);
        }
        assert_eq!(d.write(BOCHS_SHUTDOWN, 1, u64::from(b'n')), PortEffect::Exit(0));
    }
}
