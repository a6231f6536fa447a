//! `metrics_listen=ADDR:PORT`: the Prometheus metrics over plain HTTP, for
//! a scraper. Read-only: `GET /metrics`, nothing else.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::fs::ChironFs;

pub fn start(fs: Arc<ChironFs>, addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics_listen {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let fs = fs.clone();
                let _ = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || serve(&fs, conn));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn serve(fs: &ChironFs, mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the request head (up to 8 KiB).
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, ctype, body) = if line.starts_with(b"GET /metrics ") || line == b"GET /metrics\r" {
        (
            "200 OK",
            "text/plain; version=0.0.4",
            super::client::metrics(&fs.status()),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only GET /metrics\n".to_string(),
        )
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
