//! The optional HTTP endpoint of `agent` and `run` (`--metrics-listen ADDR`): `/metrics` in the
//! Prometheus text format, for users without a Collector, and `/healthz` for a liveness probe
//! (200 while the event loop turns, 503 when it has stalled). One request per connection, a
//! thread per connection (at most `MAX_CONNECTIONS` at once, so that a slow client cannot hold
//! up the kubelet's probe), bounded reads with an overall deadline: it answers GETs only.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The event loop is considered stalled when it has not turned for this long.
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// A request must have arrived within this long.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

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

/// Binds `addr` and serves it on a thread of its own; returns the bound address (port 0
/// picks a free one).
pub fn start(addr: &str, published: Published) -> Result<SocketAddr, String> {
    let addr = &listen_address(addr);
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    published.beat();
    std::thread::Builder::new()
        .name("pyusdt-http".into())
        .spawn(move || {
            let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for stream in listener.incoming().flatten() {
                // A slow or broken client costs one connection, never the server.
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed
                }
                let (published, this) = (published.clone(), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name("pyusdt-http-conn".into())
                    .spawn(move || {
                        let _ = answer(stream, &published);
                        this.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .map_err(|e| format!("starting the HTTP thread: {e}"))?;
    Ok(local)
}

fn answer(mut stream: TcpStream, published: &Published) -> std::io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // The request line and headers: 8 KiB at most, up to the blank line, within the deadline
    // however slowly the bytes come.
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(()); // too slow: closed
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
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
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
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
