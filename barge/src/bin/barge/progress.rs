//! Turns client [`Event`]s into what a person or a script sees: an indicatif bar per file on
//! stderr (when wanted), and one plain line per finished file on stdout.

use std::io::IsTerminal;

use barge::client::lesson::Event;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::ProgressMode;

/// Renders one client session's events.
pub struct Renderer {
    bars: Option<ProgressMode>,
    current: Option<ProgressBar>,
}

impl Renderer {
    pub fn new(mode: ProgressMode) -> Self {
        Self {
            bars: bars_wanted(mode).then_some(mode),
            current: None,
        }
    }

    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Start { name, size } => {
                if let Some(mode) = self.bars {
                    self.current = Some(file_bar(&name, size, mode));
                }
            }
            Event::Progress { sent } => {
                if let Some(bar) = &self.current {
                    bar.set_position(sent);
                }
            }
            Event::Done {
                name,
                size,
                elapsed,
            } => {
                if let Some(bar) = self.current.take() {
                    bar.finish_and_clear();
                }
                let secs = elapsed.as_secs_f64();
                println!(
                    "sent {} ({size} bytes) in {secs:.2}s, {:.1} MB/s",
                    printable(&name),
                    size as f64 / secs.max(1e-9) / 1e6
                );
            }
        }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        if let Some(bar) = self.current.take() {
            bar.abandon();
        }
    }
}

/// Whether `mode` asks for progress bars here.
pub fn bars_wanted(mode: ProgressMode) -> bool {
    match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    }
}

/// A progress bar on stderr for one file: name, bar, bytes, rate, ETA. `always` draws even when
/// stderr is not a terminal (indicatif's own stderr target hides itself there).
pub fn file_bar(name: &str, size: u64, mode: ProgressMode) -> ProgressBar {
    let target = if mode == ProgressMode::Always {
        ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 4)
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(size), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(printable(name).into_owned());
    bar
}

pub use barge_proto::name::printable;

/// Bytes from a peer made safe to print: text as is when it is UTF-8 without control characters,
/// otherwise escaped; cut after `max` characters.
pub fn printable_bytes(bytes: &[u8], max: usize) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => printable(s).into_owned(),
        Err(_) => bytes.escape_ascii().to_string(),
    };
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], bytes.len()),
        None => text,
    }
}
