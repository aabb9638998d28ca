//! The client connection, checked before gdbstub sees it, so that a confused or hostile client
//! cannot end the session or the run: a packet with a bad checksum is answered with `-` (the
//! protocol's request to resend) and dropped; a packet gdbstub could not parse (`shadow`), or
//! one longer than its buffer, is answered with an error reply and dropped; a `-` from the
//! client is dropped (gdbstub cannot resend, and ends the session on one); other bytes outside
//! packets are ignored. Every read gives way to a stop request (a signal, `--timeout`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use gdbstub::conn::{Connection, ConnectionExt};

use super::shadow;
use crate::runner::signals;

/// gdbstub's packet buffer holds `$`, the body, `#` and two checksum digits.
const MAX_PACKET: usize = 4096 - 4;

/// How long one wait for the client lasts before stop requests are looked at again (ms).
const POLL_MS: i32 = 100;

pub struct Checked {
    stream: TcpStream,
    /// Bytes already checked, waiting for gdbstub.
    ready: VecDeque<u8>,
    /// The client asked for no-ack mode (gdbstub agrees to it): replies of our own need no `+`.
    no_ack: bool,
}

/// The error a read returns when a stop request came while it waited.
pub fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "nestbed was asked to stop")
}

impl Checked {
    pub fn new(stream: TcpStream) -> Self {
        Checked { stream, ready: VecDeque::new(), no_ack: false }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        loop {
            if signals::cause() != signals::NONE {
                return Err(stopped());
            }
            let mut pfd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the stream's open descriptor.
            if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } <= 0 {
                continue;
            }
            match Read::read(&mut self.stream, &mut b) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Ok(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until at least one checked byte is ready.
    fn fill(&mut self) -> io::Result<()> {
        while self.ready.is_empty() {
            match self.byte()? {
                b'$' => self.packet()?,
                b @ (b'+' | 0x03) => self.ready.push_back(b),
                _ => {}
            }
        }
        Ok(())
    }

    /// The rest of a `$...#xx` packet: queued when gdbstub can take it, answered here otherwise.
    fn packet(&mut self) -> io::Result<()> {
        let mut raw = vec![b'$'];
        let mut len = 0usize;
        loop {
            match self.byte()? {
                b'#' => break,
                b'$' => {
                    raw.truncate(1);
                    len = 0;
                }
                b => {
                    len += 1;
                    if len <= MAX_PACKET {
                        raw.push(b);
                    }
                }
            }
        }
        let hex = [self.byte()?, self.byte()?];
        let sum = raw[1..].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        let given = std::str::from_utf8(&hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
        if given != Some(sum) && len <= MAX_PACKET {
            tracing::debug!("gdb packet with a bad checksum: asking to resend");
            return Write::write_all(&mut self.stream, b"-");
        }
        raw.push(b'#');
        raw.extend(hex);
        if len > MAX_PACKET || oversized_read(&raw[1..raw.len() - 3]) || !shadow::accepts(&raw) {
            let what = if len > MAX_PACKET { "too long" } else { "malformed or oversized" };
            tracing::warn!("gdb sent a {what} packet ({len} bytes): answered with an error");
            return self.reply(b"E16");
        }
        if &raw[1..raw.len() - 3] == b"QStartNoAckMode" {
            self.no_ack = true;
        }
        self.ready.extend(raw);
        Ok(())
    }

    /// Answers a packet gdbstub does not see.
    fn reply(&mut self, body: &[u8]) -> io::Result<()> {
        let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        let mut out = Vec::with_capacity(body.len() + 5);
        if !self.no_ack {
            out.push(b'+');
        }
        out.push(b'$');
        out.extend_from_slice(body);
        out.extend_from_slice(format!("#{sum:02x}").as_bytes());
        Write::write_all(&mut self.stream, &out)
    }
}

impl Connection for Checked {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.write_all(&[byte])
    }

    /// A reply being written gives way to a stop request (a signal, `--timeout`).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if signals::cause() != signals::NONE {
            return Err(stopped());
        }
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

/// A memory read (`m` or `x addr,length`) asking for more than one reply packet can carry: gdb
/// never sends one (it splits reads by the packet size the stub offers), and answering one of
/// terabytes would keep the session busy for days.
fn oversized_read(body: &[u8]) -> bool {
    let (Some(b'm' | b'x'), Some(comma)) = (body.first(), body.iter().position(|&b| b == b',')) else {
        return false;
    };
    let length = std::str::from_utf8(&body[comma + 1..]).ok().and_then(|l| usize::from_str_radix(l, 16).ok());
    length.is_none_or(|l| l > MAX_PACKET)
}

#[cfg(test)]
mod read_tests {
    use super::oversized_read;

    #[test]
    fn reads_longer_than_a_reply_are_refused() {
        assert!(oversized_read(b"m100000,401f20af432"));
        assert!(oversized_read(b"x100000,ffffffff"));
        assert!(!oversized_read(b"m100000,800"));
        assert!(!oversized_read(b"M100000,4:00000000"));
        assert!(!oversized_read(b"qSupported"));
    }
}
