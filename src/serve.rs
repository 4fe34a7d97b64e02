//! The optional HTTP endpoint of `agent` and `run` (`--metrics-listen ADDR`): `/metrics` in the
//! Prometheus text format, for users without a Collector, and `/healthz` for a liveness probe
//! (200 while the event loop turns, 503 when it has stalled). One request per connection, a
//! thread per connection, at most `MAX_CONNECTIONS` at once; when they are all taken, the
//! oldest is closed (those still waiting for their request first), so that clients trickling
//! bytes or not reading their answers cannot starve the kubelet's probe. A request must arrive whole (8 KiB of head at most) within
//! `REQUEST_DEADLINE`, and its response leave within `RESPONSE_DEADLINE`. GETs only.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The event loop is considered stalled when it has not turned for this long.
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 8;
/// A request (line and headers) must have arrived within this long after the connection.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Bytes of request line and headers read at most.
const MAX_HEAD_BYTES: usize = 8192;
/// A response must have been written within this long.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(5);

/// What the event loop publishes and the server reads.
#[derive(Clone, Default)]
pub struct Published {
    metrics: Arc<Mutex<String>>,
    /// Unix seconds of the event loop's last turn.
    heartbeat: Arc<AtomicU64>,
}

impl Published {
    pub fn set_metrics(&self, text: String) {
        if let Ok(mut m) = self.metrics.lock() {
            *m = text;
        }
    }

    pub fn beat(&self) {
        self.heartbeat.store(unix_seconds(), Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        unix_seconds().saturating_sub(self.heartbeat.load(Ordering::Relaxed))
            < STALLED_AFTER.as_secs()
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `--metrics-listen` as given, or for a bare port (`9464`, `:9464`) that port on loopback:
/// the endpoint is reachable from elsewhere only when an address says so.
fn listen_address(given: &str) -> String {
    let port = given.strip_prefix(':').unwrap_or(given);
    if port.parse::<u16>().is_ok() {
        format!("127.0.0.1:{port}")
    } else {
        given.to_string()
    }
}

/// Why `/metrics` and `/healthz` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--metrics-listen {addr}: {source} (give a free port, HOST:PORT or [IPv6]:PORT)")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the HTTP thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Binds `addr` and serves it on a thread of its own; returns the bound address (port 0
/// picks a free one).
pub fn start(addr: &str, published: Published) -> Result<SocketAddr, ServeError> {
    let addr = listen_address(addr);
    let bind_error = |source| ServeError::Bind {
        addr: addr.clone(),
        source,
    };
    let listener = TcpListener::bind(&addr).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    published.beat();
    std::thread::Builder::new()
        .name("pyusdt-http".into())
        .spawn(move || {
            let slots = Arc::new(Mutex::new(Slots::default()));
            for stream in listener.incoming().flatten() {
                // A slow or broken client costs one connection, never the server.
                let Some(id) = take_slot(&slots, &stream) else {
                    continue; // dropped: closed
                };
                let (published, own) = (published.clone(), Arc::clone(&slots));
                let spawned = std::thread::Builder::new()
                    .name("pyusdt-http-conn".into())
                    .spawn(move || {
                        let _ = answer(stream, &published, &|| answering(&own, id));
                        release(&own, id);
                    });
                if spawned.is_err() {
                    release(&slots, id);
                }
            }
        })
        .map_err(ServeError::Thread)?;
    Ok(local)
}

/// The connections being served.
#[derive(Default)]
struct Slots {
    next_id: u64,
    open: Vec<Slot>,
}

struct Slot {
    id: u64,
    since: Instant,
    /// Still waiting for its request (rather than being answered).
    reading: bool,
    /// The same socket, to close it from the accepting thread.
    socket: TcpStream,
}

/// A slot for a new connection. When all are taken, the connection that has waited longest for
/// its request is closed to make room: clients that trickle bytes cannot hold every slot
/// against the kubelet's probe, whose request comes at once. When every connection is being
/// answered, the oldest is closed (clients that do not read their answers cannot hold the
/// slots either); a probe is answered within microseconds of its request.
fn take_slot(slots: &Mutex<Slots>, stream: &TcpStream) -> Option<u64> {
    let socket = stream.try_clone().ok()?;
    let mut s = slots.lock().ok()?;
    if s.open.len() >= MAX_CONNECTIONS {
        let oldest = s
            .open
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (!c.reading, c.since))
            .map(|(i, _)| i)?;
        let evicted = s.open.swap_remove(oldest);
        // Its thread's read returns at once, and it ends.
        let _ = evicted.socket.shutdown(std::net::Shutdown::Both);
    }
    s.next_id += 1;
    let id = s.next_id;
    s.open.push(Slot {
        id,
        since: Instant::now(),
        reading: true,
        socket,
    });
    Some(id)
}

/// The connection's request has arrived: it is closed to make room only when no connection is
/// still waiting for its request.
fn answering(slots: &Mutex<Slots>, id: u64) {
    if let Ok(mut s) = slots.lock() {
        if let Some(c) = s.open.iter_mut().find(|c| c.id == id) {
            c.reading = false;
        }
    }
}

fn release(slots: &Mutex<Slots>, id: u64) {
    if let Ok(mut s) = slots.lock() {
        s.open.retain(|c| c.id != id);
    }
}

/// Reads one request (within `REQUEST_DEADLINE`, at most `MAX_HEAD_BYTES`) and answers it
/// (within `RESPONSE_DEADLINE`). `arrived`: called once the request is read.
fn answer(mut stream: TcpStream, published: &Published, arrived: &dyn Fn()) -> std::io::Result<()> {
    // The request line and headers, up to the blank line, within the deadline however slowly
    // the bytes come.
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut complete = false;
    while buf.len() < MAX_HEAD_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(()); // too slow: closed
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        // Only where the new bytes could end the head: a trickle costs no rescans.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            complete = true;
            break;
        }
    }
    arrived();
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        _ if !complete && buf.len() >= MAX_HEAD_BYTES => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head over 8 KiB\n".into(),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            published
                .metrics
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
        ),
        ("GET", "/healthz") if published.healthy() => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/healthz") => (
            "503 Service Unavailable",
            "text/plain",
            "event loop stalled\n".into(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The whole response within its deadline, however slowly the client reads.
    let deadline = Instant::now() + RESPONSE_DEADLINE;
    let mut rest = response.as_bytes();
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(()); // too slow: closed
        }
        stream.set_write_timeout(Some(left))?;
        let n = stream.write(&rest[..rest.len().min(64 * 1024)])?;
        if n == 0 {
            break;
        }
        rest = &rest[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::listen_address;

    #[test]
    fn a_bare_port_binds_loopback_only() {
        assert_eq!(listen_address("9464"), "127.0.0.1:9464");
        assert_eq!(listen_address(":9464"), "127.0.0.1:9464");
        assert_eq!(listen_address("0.0.0.0:9464"), "0.0.0.0:9464");
        assert_eq!(listen_address("[::1]:9464"), "[::1]:9464");
    }
}
