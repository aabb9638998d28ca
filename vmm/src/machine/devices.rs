//! Port-I/O devices: a 16550 UART at 0x3f8 (vm-superio; its LSR always reports the
//! transmitter empty, so polled drivers never wait) and the debug-exit port 0xf4. Other ports
//! read as all ones and ignore writes.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

pub const COM1: u16 = 0x3f8;
pub const DEBUG_EXIT: u16 = 0xf4;

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
}

pub struct Devices {
    serial: Serial<NoIrq, NoEvents, Box<dyn Write + Send>>,
}

impl Devices {
    pub fn new(console: Box<dyn Write + Send>) -> Self {
        Devices { serial: Serial::new(NoIrq, console) }
    }

    pub fn handles(port: u16) -> bool {
        (COM1..COM1 + 8).contains(&port) || port == DEBUG_EXIT
    }

    pub fn write(&mut self, port: u16, size: u8, data: u64) -> PortEffect {
        match port {
            p if (COM1..COM1 + 8).contains(&p) => {
                if self.serial.write((p - COM1) as u8, data as u8).is_err() {
                    tracing::warn!("serial console write failed");
                }
                PortEffect::None
            }
            DEBUG_EXIT => PortEffect::Exit(data as u8),
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
