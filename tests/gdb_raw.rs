//! nestbed's gdb server against a raw TCP client over loopback (no gdb needed): every wait
//! gives way to a stop request, stray bytes and malformed packets do not end the session, and
//! a seeded packet fuzzer finds no way to end it either.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::tmpdir;
use nestbed::error::code;

/// A nestbed serving gdb on a port of its choosing, with its stderr lines as they come.
struct Server {
    child: Child,
    port: u16,
    lines: Receiver<String>,
    stderr: String,
}

impl Server {
    /// `nestbed run --guest GUEST --gdb 127.0.0.1:0` plus `extra`; returns once it listens.
    fn start(guest: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nestbed"))
            .args(["run", "--guest", guest, "--gdb", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut s = Server { child, port: 0, lines, stderr: String::new() };
        let line = s.wait_for("gdb server on 127.0.0.1:");
        let port = line.split("127.0.0.1:").nth(1).unwrap();
        s.port = port.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        s
    }

    /// Waits for a stderr line containing `want` (a minute at most: nestbed is stuck then).
    fn wait_for(&mut self, want: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                    if line.contains(want) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line with `{want}`:\n{}", self.stderr),
            }
        }
    }

    fn connect(&mut self) -> TcpStream {
        let c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        self.wait_for("gdb connected");
        c
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) touches no memory of ours; the child is not reaped before `finish`.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for nestbed to end (killing it after a minute: it did not stop); returns its exit
    /// code and all of its stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let pid = self.child.id() as i32;
        let (done, watch) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(Duration::from_secs(60)).is_err() {
                // SAFETY: as in `signal`; the child is reaped only after this thread ends.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let status = self.child.wait().unwrap();
        let _ = done.send(());
        watchdog.join().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        (status.code(), self.stderr)
    }
}

fn packet(body: &[u8]) -> Vec<u8> {
    let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    let mut p = vec![b'$'];
    p.extend_from_slice(body);
    p.extend_from_slice(format!("#{sum:02x}").as_bytes());
    p
}

/// Reads one reply packet's body (skipping acks), or `-` for a NACK.
fn reply(c: &mut TcpStream) -> String {
    let mut body = Vec::new();
    let mut b = [0u8];
    let mut inside = false;
    loop {
        c.read_exact(&mut b).expect("the session answers");
        match (inside, b[0]) {
            (false, b'$') => inside = true,
            (false, b'-') => return "-".into(),
            (false, _) => {}
            (true, b'#') => {
                let mut sum = [0u8; 2];
                c.read_exact(&mut sum).unwrap();
                return String::from_utf8_lossy(&body).into_owned();
            }
            (true, x) => body.push(x),
        }
    }
}

fn ask(c: &mut TcpStream, body: &[u8]) -> String {
    c.write_all(&packet(body)).unwrap();
    reply(c)
}

/// Asserts the session is alive and the guest stopped.
fn alive(c: &mut TcpStream) {
    let r = ask(c, b"?");
    assert!(r.starts_with('T') || r.starts_with('S'), "{r}");
}

#[test]
fn every_gdb_wait_gives_way_to_signals_and_the_timeout() {
    let trace = tmpdir("gdb-wait").join("t.jsonl");
    let trace = trace.to_str().unwrap();
    for client in ["none", "idle", "half-sent"] {
        for stop in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGALRM] {
            let mut args = vec!["--gdb-wait", "--stats", "--trace", trace];
            if stop == libc::SIGALRM {
                args.extend(["--timeout", "1"]);
            }
            let mut s = Server::start("hello", &args);
            let _c = match client {
                "none" => None,
                "idle" => Some(s.connect()),
                _ => {
                    let mut c = s.connect();
                    c.write_all(b"$qSupported:multiprocess+;swbreak").unwrap();
                    Some(c)
                }
            };
            if stop != libc::SIGALRM {
                s.signal(stop);
            }
            let (code, stderr) = s.finish();
            let want = if stop == libc::SIGALRM { code::TIMEOUT } else { code::INTERRUPTED };
            assert_eq!(code, Some(want), "{client} {stop}: {stderr}");
            assert!(stderr.contains("total:"), "{client} {stop}: statistics are printed: {stderr}");
            assert!(std::path::Path::new(trace).exists(), "{client} {stop}: the trace is written");
        }
    }
}

#[test]
fn a_stray_nack_and_malformed_packets_do_not_end_the_session() {
    let mut s = Server::start("hello", &["--gdb-wait", "--timeout", "120"]);
    let mut c = s.connect();
    c.write_all(b"-").unwrap();
    alive(&mut c);
    let malformed: [&[u8]; 12] = [
        b"Hg-1",
        b"m",
        b"mzz,1",
        b"M1,2:zz",
        b"G1",
        b"Z0,1",
        b"vCont;x",
        b"vCont;t",
        b"T-1",
        b"qRcmd,zz",
        b"D;zz",
        b"qXfer:features:read:target.xml:zz",
    ];
    for body in malformed {
        let r = ask(&mut c, body);
        assert!(r.starts_with('E'), "{}: {r}", String::from_utf8_lossy(body));
        alive(&mut c);
    }
    // Longer than gdbstub's packet buffer.
    let mut long = b"m100000,".to_vec();
    long.resize(5000, b'1');
    assert!(ask(&mut c, &long).starts_with('E'));
    alive(&mut c);
    // Detach: the guest runs to its end.
    c.write_all(&packet(b"D")).unwrap();
    drop(c);
    let (code, stderr) = s.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_g_packet_of_zeros_is_refused_with_an_error_reply() {
    let mut s = Server::start("hello", &["--gdb-wait", "--timeout", "120"]);
    let mut c = s.connect();
    let regs = unrle(&ask(&mut c, b"g"));
    assert!(regs.len() > 100 && regs.bytes().all(|b| b.is_ascii_hexdigit()), "{regs}");
    let zeros = "0".repeat(regs.len());
    let mut g = b"G".to_vec();
    g.extend_from_slice(zeros.as_bytes());
    assert_eq!(ask(&mut c, &g), "E16");
    assert_eq!(unrle(&ask(&mut c, b"g")), regs, "nothing was written");
    c.write_all(&packet(b"D")).unwrap();
    drop(c);
    let (code, stderr) = s.finish();
    assert_eq!(code, Some(0), "the guest runs on to its end: {stderr}");
    assert!(stderr.contains("gdb register write refused: RFLAGS 0x0: bit 1 is reserved"), "{stderr}");
}

/// Expands the protocol's run-length encoding (`X*N`: N - 29 more X).
fn unrle(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '*' {
            let n = chars.next().unwrap() as usize - 29;
            let last = out.chars().last().unwrap();
            out.extend(std::iter::repeat_n(last, n));
        } else {
            out.push(c);
        }
    }
    out
}
