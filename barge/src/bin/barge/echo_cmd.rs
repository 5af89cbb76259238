//! `barge echo serve` and `barge echo send`: the lesson's socketserver upper-case echo.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use barge::client::echo::EchoSession;
use barge::server::{self, shutdown_signal};
use barge::service::echo::{EchoConfig, EchoService};
use tokio::io::AsyncBufReadExt;

use crate::args::{EchoSendArgs, EchoServeArgs, split_target};
use crate::progress::printable_bytes;
use crate::{exit, seconds};

const DEFAULT_ADDR: &str = "127.0.0.1:9999";

pub async fn serve(a: EchoServeArgs) -> Result<u8> {
    let config = EchoConfig {
        max_line: usize::try_from(a.max_line).context("--max-line is too large")?,
        lesson: a.lesson,
    };
    let mode = if a.lesson {
        " (lesson mode: one message per connection)"
    } else {
        ""
    };
    let listener = crate::listen(a.addr, &format!(", answering upper-cased{mode}"))?;
    server::serve(
        listener,
        Arc::new(EchoService::new(config)),
        crate::server_config(&a.framework)?,
        shutdown_signal(),
    )
    .await;
    Ok(exit::SUCCESS)
}

pub async fn send(a: EchoSendArgs) -> Result<u8> {
    let (target, messages) = split_target(&a.args, DEFAULT_ADDR)?;
    let mut session = EchoSession::new(
        &target,
        seconds(a.connect_timeout, "--connect-timeout")?,
        seconds(a.timeout, "--timeout")?,
        usize::try_from(a.max_line).context("--max-line is too large")?,
    );
    // Fail on an unreachable server before waiting for input.
    session.connect().await?;
    let terminal = std::io::stdout().is_terminal();
    let json = a.json;
    let mut out = std::io::stdout();
    let mut show = |message: &[u8], reply: &[u8]| -> Result<()> {
        if json {
            let line = serde_json::json!({
                "event": "reply",
                "message": String::from_utf8_lossy(message),
                "reply": String::from_utf8_lossy(reply),
            });
            writeln!(out, "{line}")?;
        } else if terminal {
            // A reply echoes what was sent, but a terminal must not run escape sequences in it.
            writeln!(out, "{}", printable_bytes(reply, usize::MAX))?;
        } else {
            out.write_all(reply)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    };
    if messages.is_empty() {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdin.read_until(b'\n', &mut line).await? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            let reply = session.ask(&line).await?;
            show(&line, &reply)?;
        }
    } else {
        for m in &messages {
            let reply = session.ask(m.as_bytes()).await?;
            show(m.as_bytes(), &reply)?;
        }
    }
    Ok(exit::SUCCESS)
}
