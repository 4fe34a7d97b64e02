//! The HTTP endpoint under hostile clients: connections that trickle a byte a second are
//! closed by the request deadline, a head over 8 KiB is refused, and however many such
//! clients keep reconnecting, `/healthz` (the kubelet's liveness probe) is still answered.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Starts an agent serving the endpoint; returns it and the address.
fn agent_with_endpoint() -> (Reaped, String) {
    let (agent, log) = start_agent(&["--quiet", "--metrics-listen", "127.0.0.1:0"]);
    let line = wait_for_line(&log, "serving /metrics and /healthz on http://");
    let addr = line.rsplit("http://").next().unwrap().trim().to_string();
    wait_for_line(&log, "tracing ");
    (agent, addr)
}

/// Opens a connection and sends a byte a second of a request head that never ends, until
/// the server closes it or `stop` is raised. Returns whether the server closed it.
fn trickle(addr: &str, stop: &AtomicBool) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut byte = [0u8; 1];
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if s.write_all(&[*b]).is_err() {
            return true;
        }
        // Waits a second for the server: a close shows as end of stream or a reset.
        match s.read(&mut byte) {
            Ok(0) | Err(_) if !timed_out(&s) => return true,
            _ => {}
        }
    }
    unreachable!()
}

/// Whether the last read merely timed out (the connection is still open).
fn timed_out(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    let open = matches!(s.peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// One GET with a generous timeout for the answer; the status line ("" when the connection
/// was closed without one).
fn get(addr: &str, path: &str, timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    if write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").is_err() {
        return String::new(); // closed before the request was sent
    }
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn slow_clients_are_closed_and_cannot_starve_the_health_probe() {
    if !require_bpf("slow_clients_are_closed_and_cannot_starve_the_health_probe") {
        return;
    }
    let (mut agent, addr) = agent_with_endpoint();

    // One client alone, trickling: closed by the request deadline, though it keeps sending.
    let never = AtomicBool::new(false);
    let started = Instant::now();
    assert!(
        trickle(&addr, &never),
        "the slow connection was never closed"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // A head that never ends within 8 KiB is refused.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(format!("GET /healthz HTTP/1.1\r\nX: {}", "a".repeat(9000)).as_bytes());
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&response)
    );

    // Sixteen clients trickle and reconnect as soon as they are closed, holding every slot.
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attackers: Vec<_> = (0..16)
        .map(|_| {
            let (addr, stop, closed) = (addr.clone(), Arc::clone(&stop), Arc::clone(&closed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if trickle(&addr, &stop) {
                        closed.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // The kubelet's probe: one request, answered.
    let answers: Vec<String> = (0..3)
        .map(|_| {
            let status = get(&addr, "/healthz", Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(700));
            status
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    for status in &answers {
        assert_eq!(status, "HTTP/1.1 200 OK", "{answers:?}");
    }
    assert!(
        closed.load(Ordering::Relaxed) > 0,
        "no slow connection was closed"
    );
    let status = stop_agent(&mut agent);
    assert!(status.success(), "{status:?}");
}

fn stop_agent(agent: &mut Reaped) -> std::process::ExitStatus {
    stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(15))
}
