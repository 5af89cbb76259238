//! `barge udp serve` and `barge udp send`: the lesson's UDP request/reply, with timeouts, retries,
//! reply matching and ping-style statistics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use barge::client::udp::{self, UdpEvent, UdpOptions, UdpSummary};
use barge::server::{datagram, shutdown_signal};
use barge::service::udp::{UdpReply, UdpService};
use barge_proto::datagram::Fit;
use serde_json::json;

use crate::args::{UdpSendArgs, UdpServeArgs, split_target};
use crate::exit;
use crate::progress::printable_bytes;

const DEFAULT_ADDR: &str = "127.0.0.1:9000";

pub async fn serve(a: UdpServeArgs) -> Result<u8> {
    let (reply, what) = match (a.echo, a.upper, a.reply) {
        (true, _, _) => (UdpReply::Echo, "echoing".to_owned()),
        (_, true, _) => (UdpReply::Upper, "echoing upper-cased".to_owned()),
        (_, _, Some(text)) => (
            UdpReply::Text(text.clone().into_bytes()),
            format!("replying {text:?}"),
        ),
        _ => (UdpReply::Hi, "replying \"hi\"".to_owned()),
    };
    let socket = tokio::net::UdpSocket::bind(a.addr)
        .await
        .with_context(|| format!("cannot bind UDP {}", a.addr))?;
    crate::announce(&format!(
        "udp listening on {}, {what}",
        socket.local_addr()?
    ))?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    datagram::serve_datagrams(
        socket,
        Arc::new(UdpService::new(reply)),
        workers,
        shutdown_signal(),
    )
    .await;
    Ok(exit::SUCCESS)
}

pub async fn send(a: UdpSendArgs) -> Result<u8> {
    let (target, rest) = split_target(&a.args, DEFAULT_ADDR)?;
    let message = rest
        .first()
        .map_or("hello", String::as_str)
        .as_bytes()
        .to_vec();
    let payload = match a.size {
        None => message,
        Some(size) => {
            let size = usize::try_from(size).context("--size is too large")?;
            let unit: &[u8] = if message.is_empty() { b"x" } else { &message };
            unit.iter().copied().cycle().take(size).collect()
        }
    };
    let server = tokio::net::lookup_host(&target)
        .await
        .with_context(|| format!("cannot resolve {target}"))?
        .next()
        .with_context(|| format!("{target} resolves to no address"))?;
    if let Fit::Fragmented {
        fragments,
        mtu_payload,
    } = udp::check(&payload, server)?
    {
        eprintln!(
            "barge: warning: {} bytes exceed the {mtu_payload} bytes that fit one Ethernet frame; \
             the datagram travels as {fragments} IP fragments and is lost if any one is",
            payload.len()
        );
    }
    let options = UdpOptions {
        count: a.count,
        interval: Duration::try_from_secs_f64(a.interval).map_err(|_| {
            crate::config::UsageError("--interval must be a number of seconds, 0 or more".into())
        })?,
        timeout: crate::config::seconds(a.timeout, "--timeout")?,
        retries: a.retries,
    };
    let json = a.json;
    let summary = udp::request_reply(server, &payload, &options, |e| {
        print_event(&e, server, json)
    })
    .await?;
    print_summary(&summary, server, json);
    Ok(match summary.replies {
        n if n == summary.requests => exit::SUCCESS,
        0 => exit::UNREACHABLE,
        _ => exit::PARTIAL,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_event(e: &UdpEvent, server: std::net::SocketAddr, json: bool) {
    match (e, json) {
        (
            UdpEvent::Reply {
                seq,
                attempt,
                rtt,
                reply,
            },
            false,
        ) => println!(
            "reply from {server}: seq={seq} attempt={attempt} bytes={} time={:.3} ms: {}",
            reply.len(),
            ms(*rtt),
            printable_bytes(reply, 120)
        ),
        (
            UdpEvent::Reply {
                seq,
                attempt,
                rtt,
                reply,
            },
            true,
        ) => println!(
            "{}",
            json!({"event": "reply", "seq": seq, "attempt": attempt, "bytes": reply.len(),
                   "rtt_ms": ms(*rtt), "reply": String::from_utf8_lossy(reply)})
        ),
        (UdpEvent::Lost { seq, attempts }, false) => {
            println!("no reply from {server}: seq={seq} after {attempts} attempt(s)")
        }
        (UdpEvent::Lost { seq, attempts }, true) => {
            println!(
                "{}",
                json!({"event": "lost", "seq": seq, "attempts": attempts})
            )
        }
    }
}

fn print_summary(s: &UdpSummary, server: std::net::SocketAddr, json: bool) {
    let stats = s.rtt_stats();
    if json {
        let rtt = stats.map(|[min, avg, max, p99]| {
            json!({"min": ms(min), "avg": ms(avg), "max": ms(max), "p99": ms(p99)})
        });
        println!(
            "{}",
            json!({"event": "summary", "server": server.to_string(), "requests": s.requests,
                   "replies": s.replies, "transmissions": s.transmissions,
                   "loss_percent": s.loss_percent(), "rtt_ms": rtt})
        );
        return;
    }
    println!("--- {server} udp request/reply statistics ---");
    print!(
        "{} requests, {} replies, {:.1}% loss, {} datagrams sent",
        s.requests,
        s.replies,
        s.loss_percent(),
        s.transmissions
    );
    match stats {
        Some([min, avg, max, p99]) => println!(
            "\nrtt min/avg/max/p99 = {:.3}/{:.3}/{:.3}/{:.3} ms",
            ms(min),
            ms(avg),
            ms(max),
            ms(p99)
        ),
        None => println!(),
    }
}
