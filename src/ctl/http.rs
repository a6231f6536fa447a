//! `metrics_listen=ADDR:PORT`: the Prometheus metrics over plain HTTP, for
//! a scraper. Read-only: `GET /metrics` (any query string ignored) and
//! `HEAD /metrics`, nothing else. A fixed pool of `WORKERS` threads serves
//! one connection each at a time, with a deadline on the whole exchange:
//! more connections wait in the listen backlog, they start no threads.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fs::ChironFs;

/// Connections served at once.
pub const WORKERS: usize = 4;
/// Longest a client may take to send its request head.
const DEADLINE: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_HEAD: usize = 8192;

pub fn start(fs: Arc<ChironFs>, addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics_listen {addr}: {e}"))?;
    for i in 0..WORKERS {
        let listener = listener.try_clone().map_err(|e| e.to_string())?;
        let fs = fs.clone();
        std::thread::Builder::new()
            .name(format!("metrics{i}"))
            .spawn(move || {
                loop {
                    match listener.accept() {
                        Ok((conn, _)) => serve(&fs, conn),
                        // Out of fds and the like: do not spin.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads the request head: up to `MAX_HEAD` bytes, the blank line, or the
/// deadline, whichever comes first.
fn read_head(conn: &mut TcpStream) -> Vec<u8> {
    let end = Instant::now() + DEADLINE;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// What a request asks: (method, path without the query, wants OpenMetrics).
fn parse(head: &[u8]) -> Option<(String, String, bool)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    Some((method, path, openmetrics))
}

fn serve(fs: &ChironFs, mut conn: TcpStream) {
    let _ = conn.set_write_timeout(Some(DEADLINE));
    let head = read_head(&mut conn);
    let (status, extra, ctype, body, send_body) = match parse(&head) {
        Some((m, p, om)) if p == "/metrics" && (m == "GET" || m == "HEAD") => {
            let st = fs.status();
            let (ctype, body) = if om {
                (
                    super::metrics::OPENMETRICS,
                    super::metrics::openmetrics(&st),
                )
            } else {
                (
                    super::metrics::PROMETHEUS_TEXT,
                    super::metrics::prometheus_text(&st),
                )
            };
            ("200 OK", "", ctype, body, m == "GET")
        }
        Some((m, p, _)) if p == "/metrics" => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "text/plain",
            format!("{m}: only GET and HEAD /metrics\n"),
            m != "HEAD",
        ),
        Some((m, _, _)) => (
            "404 Not Found",
            "",
            "text/plain",
            "only GET /metrics\n".to_string(),
            m != "HEAD",
        ),
        None => (
            "400 Bad Request",
            "",
            "text/plain",
            "bad request\n".to_string(),
            true,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        out.push_str(&body);
    }
    let _ = conn.write_all(out.as_bytes());
}
