//! The open-loop generator behind `cache_bench narinfo-rate`, built as wrk2 is:
//! a few threads (GEN_THREADS, default 1), each driving its share of the
//! connections from one epoll set over non-blocking sockets, with one timerfd
//! armed for the next scheduled send.
//!
//! Why not a thread per connection: on 2 cores the generator shares the machine
//! with the server it measures, and a blocked thread per connection costs two
//! sleeps and two wake-ups per request (the timer's and the answer's), more CPU
//! than the server spends answering. Here a request costs a send, a read and a
//! share of an `epoll_wait`; when answers and timers come close together, one
//! wake-up serves several.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use rustix::event::epoll;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// What to send: `rate` requests/s in all over `conns` keep-alive connections
/// to `addr` for `secs` seconds, GETting `paths` round-robin.
pub struct Load {
    pub addr: String,
    pub secs: u64,
    pub conns: usize,
    pub rate: f64,
    pub threads: usize,
    pub paths: Vec<String>,
}

/// Every request's times, in nanoseconds.
#[derive(Default)]
pub struct Samples {
    /// From each request's scheduled time to its answer's end.
    pub latency: Vec<u64>,
    /// From each request's sending to its answer's end.
    pub service: Vec<u64>,
    /// How late a request went out whose connection was idle at its scheduled
    /// time: the timer's and the generator's own delay.
    pub lag: Vec<u64>,
    /// When the first request was scheduled and the last answer ended.
    pub start: u64,
    pub end: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: what the timerfd is armed in.
pub fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One keep-alive connection with at most one request in flight.
struct Conn {
    sock: TcpStream,
    /// Connection `c` of `n` sends its request `k` at `first + k * interval`,
    /// `first = start + interval * c / n`.
    first: u64,
    k: u64,
    /// The request in flight: its scheduled and its sending time.
    in_flight: Option<(u64, u64)>,
    /// When the last answer ended.
    last_done: u64,
    next_path: usize,
    buf: Vec<u8>,
    len: usize,
    req: Vec<u8>,
}

/// Runs `load`; panics on any error or non-200 answer (a benchmark, not a tool).
pub fn run(load: &Load) -> Samples {
    let interval = (load.conns as f64 / load.rate * 1e9) as u64;
    let threads = load.threads.clamp(1, load.conns);
    let mut groups: Vec<Vec<(usize, TcpStream)>> = (0..threads).map(|_| Vec::new()).collect();
    for c in 0..load.conns {
        let s = TcpStream::connect(&load.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        groups[c % threads].push((c, s));
    }
    let start = now() + 20_000_000;
    let end = start + load.secs * 1_000_000_000;
    let mut handles = Vec::new();
    for group in groups {
        let paths = load.paths.clone();
        let (conns, host) = (load.conns as u64, load.addr.clone());
        handles.push(std::thread::spawn(move || {
            let conns = group
                .into_iter()
                .map(|(c, sock)| Conn {
                    sock,
                    first: start + interval * c as u64 / conns,
                    k: 0,
                    in_flight: None,
                    last_done: 0,
                    next_path: c,
                    buf: vec![0; 64 * 1024],
                    len: 0,
                    req: Vec::with_capacity(256),
                })
                .collect();
            drive(conns, interval, end, &paths, &host)
        }));
    }
    let mut all = Samples {
        start,
        ..Samples::default()
    };
    for h in handles {
        let s = h.join().unwrap();
        all.latency.extend(s.latency);
        all.service.extend(s.service);
        all.lag.extend(s.lag);
        all.end = all.end.max(s.end);
    }
    all
}

/// The event loop of one thread over its connections.
fn drive(mut conns: Vec<Conn>, interval: u64, end: u64, paths: &[String], host: &str) -> Samples {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    let timer = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )
    .unwrap();
    // Edge-triggered, and never read: re-arming resets the expiry count, and each
    // expiry is a new edge.
    const TIMER: u64 = u64::MAX;
    epoll::add(
        &ep,
        &timer,
        epoll::EventData::new_u64(TIMER),
        epoll::EventFlags::IN | epoll::EventFlags::ET,
    )
    .unwrap();
    for (i, c) in conns.iter().enumerate() {
        epoll::add(
            &ep,
            &c.sock,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )
        .unwrap();
    }
    let mut out = Samples::default();
    let cap = conns.len() * ((end - conns[0].first) / interval.max(1) + 16) as usize;
    out.latency.reserve(cap);
    out.service.reserve(cap);
    out.lag.reserve(cap);
    let mut armed = 0;
    let mut events = Vec::with_capacity(conns.len() + 1);
    loop {
        let t = now();
        let mut wake = u64::MAX;
        let mut busy = false;
        for c in &mut conns {
            if c.in_flight.is_some() {
                busy = true;
                continue;
            }
            let sched = c.first + c.k * interval;
            if sched >= end {
                continue;
            }
            if sched > t {
                wake = wake.min(sched);
                continue;
            }
            busy = true;
            if c.last_done <= sched {
                out.lag.push(t - sched);
            }
            c.send(&paths[c.next_path % paths.len()], host);
            c.next_path += 1;
            c.in_flight = Some((sched, now()));
            c.k += 1;
        }
        if !busy && wake == u64::MAX {
            break;
        }
        if wake != u64::MAX && wake != armed {
            let at = Timespec {
                tv_sec: (wake / 1_000_000_000) as _,
                tv_nsec: (wake % 1_000_000_000) as _,
            };
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            timerfd_settime(
                &timer,
                TimerfdTimerFlags::ABSTIME,
                &Itimerspec {
                    it_interval: zero,
                    it_value: at,
                },
            )
            .unwrap();
            armed = wake;
        }
        events.clear();
        epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None).unwrap();
        for ev in &events {
            let i = ev.data.u64();
            if i == TIMER {
                continue;
            }
            let c = &mut conns[i as usize];
            if c.read_answer() {
                let done = now();
                let (sched, sent) = c.in_flight.take().expect("an answer with no request");
                out.latency.push(done - sched);
                out.service.push(done - sent);
                out.end = out.end.max(done);
                c.last_done = done;
            }
        }
    }
    out
}

impl Conn {
    fn send(&mut self, path: &str, host: &str) {
        self.req.clear();
        write!(self.req, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        // The socket's send buffer is empty (one request in flight, its answer
        // read), so a request this small goes out whole.
        let n = self.sock.write(&self.req).unwrap();
        assert_eq!(n, self.req.len(), "short send");
    }

    /// Reads what has arrived; true when it completes the answer in flight,
    /// which must be a 200 with a `Content-Length` body.
    fn read_answer(&mut self) -> bool {
        loop {
            if self.len == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match self.sock.read(&mut self.buf[self.len..]) {
                Ok(0) => panic!("server closed the connection"),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        let data = &self.buf[..self.len];
        let Some(head) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head_text = std::str::from_utf8(&data[..head]).expect("answer head not UTF-8");
        let mut lines = head_text.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1));
        assert_eq!(status, Some("200"), "answer: {head_text}");
        let len: usize = lines
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().expect("Content-Length"))
            })
            .expect("this client needs Content-Length");
        let total = head + 4 + len;
        if self.len < total {
            return false;
        }
        assert_eq!(self.len, total, "bytes after the answer, none requested");
        self.len = 0;
        true
    }
}
