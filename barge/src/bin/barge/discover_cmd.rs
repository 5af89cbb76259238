//! `barge discover`: lists the servers that answer on the LAN (or watches them come and go), and
//! turns a server name given to `--to`/`--from` into its address.

use std::time::Duration;

use anyhow::{Context, Result};
use barge::lan::discover::{Ask, Change, Found, Watch, discover, find};

use crate::args::DiscoverArgs;
use crate::config::UsageError;
use crate::exit;

/// The environment variable that sets the discovery port for name lookups (`--to NAME`).
pub const PORT_ENV: &str = "BARGE_DISCOVERY_PORT";

pub async fn run(a: DiscoverArgs) -> Result<u8> {
    if let Some(name) = &a.name {
        barge_proto::lan::check_name(name).map_err(|e| UsageError(format!("--name: {e}")))?;
    }
    let timeout = match a.timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(UsageError("--timeout: a positive number of seconds".into()).into());
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    if a.watch {
        return watch(&a, timeout).await;
    }
    let ask = Ask {
        port: a.discovery_port,
        at: a.at,
        name: a.name.clone(),
        timeout: timeout.unwrap_or(Duration::from_secs(2)),
    };
    let started = std::time::Instant::now();
    let found = discover(&ask)
        .await
        .context("cannot send a discovery query")?;
    if a.json {
        for f in &found {
            println!("{}", line("found", f, started));
        }
    } else if found.is_empty() {
        eprintln!(
            "no barge server answered within {:.1} s (servers announce themselves with `barge \
             serve --announce`; multicast must pass between you)",
            ask.timeout.as_secs_f64()
        );
    } else {
        println!(
            "{:<24} {:<28} {:<7} {:<7} {:>7}  TLS",
            "NAME", "ADDRESS", "HTTP", "TOKENS", "AGE"
        );
        for f in &found {
            let a = &f.announcement;
            println!(
                "{:<24} {:<28} {:<7} {:<7} {:>6}ms  {}",
                a.name,
                f.addr.to_string(),
                a.http.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if a.tokens { "yes" } else { "no" },
                f.heard.saturating_duration_since(started).as_millis(),
                a.tls.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(if found.is_empty() {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}

/// One JSON line: the event, the server, and how long after the start it was heard.
fn line(event: &str, f: &Found, started: std::time::Instant) -> serde_json::Value {
    let a = &f.announcement;
    serde_json::json!({
        "event": event,
        "name": a.name,
        "addr": f.addr.to_string(),
        "http": f.http().map(|h| h.to_string()),
        "tls": a.tls,
        "tokens": a.tokens,
        "versions": a.versions,
        "id": a.id,
        "every": a.every,
        // Fractional: on a LAN an answer comes well within a millisecond.
        "age_ms": (f.heard.saturating_duration_since(started).as_micros() as f64) / 1000.0,
    })
}

async fn watch(a: &DiscoverArgs, timeout: Option<Duration>) -> Result<u8> {
    let started = std::time::Instant::now();
    let mut w = Watch::start(a.discovery_port)
        .await
        .context("cannot listen to the discovery group")?;
    let run = async {
        loop {
            let (event, f) = match w.next().await {
                Change::Found(f) => ("found", f),
                Change::Lost(f) => ("lost", f),
            };
            if a.name
                .as_ref()
                .is_some_and(|n| !n.eq_ignore_ascii_case(&f.announcement.name))
            {
                continue;
            }
            if a.json {
                println!("{}", line(event, &f, started));
            } else {
                println!("{event:<6} {:<24} {}", f.announcement.name, f.addr);
            }
        }
    };
    match timeout {
        Some(t) => {
            let _ = tokio::time::timeout(t, run).await;
        }
        None => run.await,
    }
    Ok(exit::SUCCESS)
}

/// `addr` as given when it is an address; else a server name looked up on the LAN (the port from
/// [`PORT_ENV`], else barge's), answered as `IP:PORT`.
pub async fn resolve(addr: &str, wait: Duration) -> Result<String> {
    if crate::args::address_like(addr).is_some() {
        return Ok(addr.to_owned());
    }
    barge_proto::lan::check_name(addr).map_err(|e| UsageError(format!("{addr:?}: {e}")))?;
    let port = match std::env::var(PORT_ENV) {
        Ok(p) => p
            .parse()
            .map_err(|_| UsageError(format!("{PORT_ENV}={p:?}: not a port")))?,
        Err(_) => barge::lan::PORT,
    };
    let ask = Ask {
        port,
        timeout: wait,
        ..Ask::default()
    };
    match find(addr, &ask)
        .await
        .context("cannot send a discovery query")?
    {
        Some(f) => {
            tracing::info!(name = addr, addr = %f.addr, tls = ?f.announcement.tls, "found on the LAN");
            Ok(f.addr.to_string())
        }
        None => anyhow::bail!(
            "no server named {addr:?} answered on the LAN within {:.1} s (is it started with \
             --announce? `barge discover` lists those that answer; or give HOST:PORT)",
            wait.as_secs_f64()
        ),
    }
}
