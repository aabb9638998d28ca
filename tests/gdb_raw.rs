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

/// Sends a packet and returns its reply, after any console output (`O` packets) before it.
fn ask(c: &mut TcpStream, body: &[u8]) -> String {
    c.write_all(&packet(body)).unwrap();
    loop {
        let r = reply(c);
        // No other reply starts with `O` (memory and registers are lowercase hex).
        if !r.starts_with('O') || r == "OK" {
            return r;
        }
    }
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
    // A read of terabytes (the fuzzer at 20 times its budget found it): once answered byte by
    // byte, it kept the session busy past any timeout; now refused as no gdb sends it.
    assert!(ask(&mut c, b"m100000,401f20af432").starts_with('E'));
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

/// Packets the fuzzer starts from: everything a stopped target answers without running the
/// guest (resuming, killing and detaching would end the session for good reasons).
const TEMPLATES: [&str; 24] = [
    "?",
    "g",
    "G0011",
    "m100000,40",
    "M100000,4:90909090",
    "X100000,0:",
    "p10",
    "P10=0000000000000000",
    "Hg1",
    "Hg2",
    "Hc-1",
    "T1",
    "T2",
    "qC",
    "qfThreadInfo",
    "qsThreadInfo",
    "qAttached",
    "qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+",
    "qXfer:features:read:target.xml:0,ffb",
    "qThreadExtraInfo,1",
    "qRcmd,68656c70",
    "Z0,100000,1",
    "z1,100000,1",
    "Z2,200000,8",
];

/// A fuzzed packet body: a template cut, overwritten or extended with random bytes.
fn fuzzed(rng: &mut common::Rng) -> Vec<u8> {
    let mut b = rng.pick(&TEMPLATES).as_bytes().to_vec();
    let alphabet = b"0123456789abcdefxzZ,;:-=.p$#*}{ \x00\x7f\xff";
    for _ in 0..rng.below(4) {
        match rng.below(4) {
            0 if !b.is_empty() => b.truncate(rng.below(b.len() as u64) as usize),
            1 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = *rng.pick(alphabet);
            }
            2 => b.extend((0..rng.below(16)).map(|_| *rng.pick(alphabet))),
            _ => b.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
        }
    }
    // Framing bytes inside a body would start or end another packet.
    b.retain(|c| !matches!(c, b'$' | b'#'));
    b
}

#[test]
fn fuzzed_packets_never_end_the_session() {
    let n = 1500 * common::fuzz_scale();
    let mut rng = common::Rng(0x6db_5eed);
    let mut s = Server::start("hello", &["--gdb-wait", "--timeout", "600"]);
    let mut c = s.connect();
    let mut answered = [0u32; 4];
    for i in 0..n {
        let body = fuzzed(&mut rng);
        // Stay stopped: no resume, kill, detach, reset or restart.
        if matches!(
            body.first(),
            Some(b'c' | b'C' | b's' | b'S' | b'v' | b'k' | b'D' | b'R' | b'r' | b'!' | b'i' | b'I')
        ) {
            continue;
        }
        match rng.below(10) {
            // Noise outside packets, a stray ACK or NACK (an interrupt byte would be answered
            // with a stop reply).
            0 => c.write_all(&[*rng.pick(b"-+x\n")]).unwrap(),
            // A bad checksum: NACKed.
            1 => {
                let mut p = packet(&body);
                let last = p.len() - 1;
                p[last] = if p[last] == b'0' { b'1' } else { b'0' };
                c.write_all(&p).unwrap();
                assert_eq!(reply(&mut c), "-", "packet {i}");
                answered[0] += 1;
                continue;
            }
            _ => {}
        }
        let r = ask(&mut c, &body);
        answered[match r.as_bytes().first() {
            Some(b'E') => 1,
            None => 2,
            _ => 3,
        }] += 1;
        if i % 50 == 0 {
            alive(&mut c);
        }
    }
    alive(&mut c);
    let sent: u32 = answered.iter().sum();
    println!(
        "gdb fuzzer: {sent} packets: {} NACKed, {} error replies, {} empty replies, {} other replies",
        answered[0], answered[1], answered[2], answered[3]
    );
    c.write_all(&packet(b"k")).unwrap();
    drop(c);
    let (code, stderr) = s.finish();
    assert_eq!(code, Some(code::INTERRUPTED), "killed by the client, not by a packet before: {stderr}");
    assert!(!stderr.contains("gdb connection ended"), "{stderr}");
}
