//! `cp-probe`: the traffic a test makes, one attempt per invocation, with a JSON verdict on
//! stdout. The harness starts it inside a cgroup (and optionally a network namespace) before it
//! opens any socket. `serve` is the "world" side: it reports every connection, datagram and ICMP
//! echo it receives.

mod bench;
mod compat;
mod connect;
mod dns;
mod echo;
mod raw;
mod serve;
mod sys;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::json;

use crate::{
    bench::{bench_client, bench_serve, pin_cpu},
    connect::{
        hold, sendmmsg, tcp, tcp_mapped, tfo, udp_connect, udp_from, udp_sendto, uring_connect,
    },
    echo::{client_rr, echo_serve},
    raw::{packet, packet_sport, ping_sock, raw_icmp, spoof_reply},
    serve::serve,
    sys::{addr, out, ports, res},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let payload =
        std::env::var("CP_PAYLOAD").unwrap_or_else(|_| format!("probe-{}", std::process::id()));
    pin_cpu();
    let r = match a(0).as_str() {
        "bench-serve" => {
            bench_serve(a(1).parse().expect("port"));
            return;
        }
        "bench" => bench_client(&a(1), addr(&a(2)), a(3).parse().unwrap_or(1.0)),
        "dns-serve" => {
            dns::serve(&a(1), &args[2..]);
            return;
        }
        "dns-query" => dns::query(
            addr(&a(1)),
            &a(2),
            if a(3).is_empty() { "A" } else { &args[3] },
            &a(4),
        ),
        "tcp" => res(tcp(addr(&a(1)), &payload)),
        "tcp-mapped" => res(tcp_mapped(addr(&a(1)), &payload)),
        "udp-sendto" => res(udp_sendto(addr(&a(1)), &payload)),
        "udp-connect" => res(udp_connect(addr(&a(1)), &payload)),
        "sendmmsg" => res(sendmmsg(addr(&a(1)), &payload)),
        "tfo" => res(tfo(addr(&a(1)), &payload)),
        "io-uring" => res(uring_connect(addr(&a(1)), &payload)),
        "raw-icmp" => res(raw_icmp(a(1).parse().expect("ip"))),
        "ping" => res(ping_sock(a(1).parse().expect("ip"))),
        "packet" => {
            let mut mac = [0u8; 6];
            for (i, b) in a(2).split(':').enumerate().take(6) {
                mac[i] = u8::from_str_radix(b, 16).expect("mac");
            }
            let src: std::net::Ipv4Addr = a(3).parse().expect("src ip");
            let mut r = res(packet(&a(1), mac, src.octets(), addr(&a(4)), &payload));
            r["src"] = json!(SocketAddr::new(IpAddr::V4(src), packet_sport()).to_string());
            r
        }
        "compat-uring" => res(compat::io_uring_setup().map(|_| ())),
        "fork" => connect::fork_tcp(addr(&a(1)), &payload),
        "exec" => {
            // Replace this process with another binary that makes the attempt.
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(&args[1..])
                .exec();
            json!({"ok": false, "error": err.to_string()})
        }
        "udp-flood" => connect::udp_flood(
            addr(&a(1)),
            a(2).parse().unwrap_or(1000),
            a(3).parse().unwrap_or(1),
        ),
        "loop" => connect::alternate(addr(&a(1)), addr(&a(2)), a(3).parse().unwrap_or(3)),
        "hold" => {
            hold(addr(&a(1)), a(2).parse().unwrap_or(5));
            return;
        }
        "serve" => {
            serve(&ports(&a(1)), &ports(&a(2)), a(3) == "icmp");
            return;
        }
        "echo-serve" => {
            let also = (!a(3).is_empty()).then(|| addr(&a(3)));
            echo_serve(
                a(1).parse().expect("tcp port"),
                a(2).parse().expect("udp port"),
                also,
            );
            return;
        }
        "tcp-rr" | "udp-rr" => {
            let src = (!a(2).is_empty() && a(2) != "-").then(|| a(2).parse().expect("src ip"));
            let n = a(3).parse().unwrap_or(1);
            client_rr(&a(0)[..3], addr(&a(1)), src, n, &payload)
        }
        "idle" => {
            // A resident process (a pod's long-lived container) that opens nothing.
            out(json!({"event": "ready", "pid": std::process::id()}));
            std::thread::sleep(Duration::from_secs(a(1).parse().unwrap_or(30)));
            return;
        }
        "spoof-reply" => {
            spoof_reply(
                a(1).parse().expect("port"),
                a(2).parse().expect("local ip"),
                addr(&a(3)),
                &payload,
            );
            return;
        }
        "udp-from" => res(udp_from(a(1).parse().expect("port"), addr(&a(2)), &payload)),
        other => {
            eprintln!("unknown probe `{other}`");
            std::process::exit(2);
        }
    };
    out(r);
}
