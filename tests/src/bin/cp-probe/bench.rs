//! The benchmark server and clients (`bench-serve`, `bench`).

use std::{
    io::{Read, Write},
    mem::{size_of, zeroed},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::sys::out;

/// Pins this process to the CPU in `CP_CPU`, if set.
pub(crate) fn pin_cpu() {
    if let Some(cpu) = std::env::var("CP_CPU")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    {
        // SAFETY: a zeroed cpu_set_t with one bit set, passed to sched_setaffinity for ourselves.
        unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        }
    }
}

/// Benchmark server: TCP echo of 64-byte requests (a connection whose first byte is `B` is a
/// bulk sink), and a UDP sink.
pub(crate) fn bench_serve(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let u = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while u.recv(&mut buf).is_ok() {}
    });
    out(json!({"event": "ready"}));
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            let mut first = true;
            let mut bulk = false;
            loop {
                let n = match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if first {
                    bulk = buf[0] == b'B';
                    first = false;
                }
                if !bulk && c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
}

pub(crate) fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Benchmark clients: `crr`, `rr`, `stream`, `udp` (connected), `udp-sendto` (unconnected),
/// `deny` (connects expected to fail).
pub(crate) fn bench_client(mode: &str, dst: SocketAddr, secs: f64) -> serde_json::Value {
    let dur = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut lat: Vec<u64> = Vec::new();
    let mut n: u64 = 0;
    let mut bytes: u64 = 0;
    let mut errors: u64 = 0;
    let req = [b'r'; 64];
    let mut resp = [0u8; 64];
    match mode {
        "crr" => {
            while t0.elapsed() < dur {
                let t = Instant::now();
                let ok = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect(dst)?;
                    s.set_nodelay(true)?;
                    s.write_all(&req)?;
                    s.read_exact(&mut resp)?;
                    Ok(())
                })();
                if ok.is_ok() {
                    n += 1;
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
        }
        "deny" => {
            while t0.elapsed() < dur {
                let t = Instant::now();
                if TcpStream::connect(dst).is_err() {
                    n += 1;
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
        }
        "rr" => {
            let mut s = TcpStream::connect(dst).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            while t0.elapsed() < dur {
                let t = Instant::now();
                if s.write_all(&req)
                    .and_then(|()| s.read_exact(&mut resp))
                    .is_err()
                {
                    errors += 1;
                    break;
                }
                n += 1;
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        "stream" => {
            let mut s = TcpStream::connect(dst).expect("connect");
            let mut chunk = vec![b'B'; 65536];
            chunk[0] = b'B';
            while t0.elapsed() < dur {
                if let Ok(w) = s.write(&chunk) {
                    bytes += w as u64;
                } else {
                    errors += 1;
                    break;
                }
            }
        }
        "udp" => {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.connect(dst).expect("connect");
            while t0.elapsed() < dur {
                match s.send(&req) {
                    Ok(_) => n += 1,
                    Err(_) => errors += 1,
                }
            }
        }
        "udp-sendto" => {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            while t0.elapsed() < dur {
                match s.send_to(&req, dst) {
                    Ok(_) => n += 1,
                    Err(_) => errors += 1,
                }
            }
        }
        other => panic!("unknown bench mode {other}"),
    }
    let el = t0.elapsed().as_secs_f64();
    json!({
        "ok": true, "mode": mode, "n": n, "errors": errors, "secs": el,
        "rate": n as f64 / el, "bytes_per_s": bytes as f64 / el,
        "p50_ns": percentile(&mut lat, 0.5), "p99_ns": percentile(&mut lat, 0.99),
    })
}
