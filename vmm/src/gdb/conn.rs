//! The client connection, checked before gdbstub sees it: a packet with a bad checksum is
//! answered with `-` (the protocol's request to resend) and dropped, bytes outside packets are
//! ignored, so a confused or hostile client cannot end the session or the run.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use gdbstub::conn::{Connection, ConnectionExt};

/// Longest packet accepted (gdb's own limit is far lower).
const MAX_PACKET: usize = 1 << 16;

pub struct Checked {
    stream: TcpStream,
    /// Bytes already checked, waiting for gdbstub.
    ready: VecDeque<u8>,
}

impl Checked {
    pub fn new(stream: TcpStream) -> Self {
        Checked { stream, ready: VecDeque::new() }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.stream.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// Reads until at least one checked byte is ready.
    fn fill(&mut self) -> io::Result<()> {
        while self.ready.is_empty() {
            match self.byte()? {
                b'$' => self.packet()?,
                b @ (b'+' | b'-' | 0x03) => self.ready.push_back(b),
                _ => {}
            }
        }
        Ok(())
    }

    /// The rest of a `$...#xx` packet: queued when its checksum holds, NACKed otherwise.
    fn packet(&mut self) -> io::Result<()> {
        let mut body = Vec::new();
        loop {
            match self.byte()? {
                b'#' => break,
                b'$' => body.clear(),
                b if body.len() < MAX_PACKET => body.push(b),
                _ => {}
            }
        }
        let hex = [self.byte()?, self.byte()?];
        let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        let given = std::str::from_utf8(&hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
        if given != Some(sum) || body.len() >= MAX_PACKET {
            tracing::debug!("gdb packet with a bad checksum or too long: asking to resend");
            Write::write_all(&mut self.stream, b"-")?;
            return Ok(());
        }
        self.ready.push_back(b'$');
        self.ready.extend(body);
        self.ready.push_back(b'#');
        self.ready.extend(hex);
        Ok(())
    }
}

impl Connection for Checked {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        Write::write_all(&mut self.stream, &[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(&mut self.stream, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Write::flush(&mut self.stream)
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        self.stream.set_nodelay(true)
    }
}

impl ConnectionExt for Checked {
    fn read(&mut self) -> io::Result<u8> {
        self.fill()?;
        self.ready.pop_front().ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if let Some(&b) = self.ready.front() {
            return Ok(Some(b));
        }
        self.stream.set_nonblocking(true)?;
        let mut b = [0u8];
        let r = self.stream.peek(&mut b);
        self.stream.set_nonblocking(false)?;
        match r {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(Some(b[0])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}
