//! Progress output for long work: a progress bar where stderr is a terminal, periodic log
//! lines where it is not (CI, files), and log lines that print above the bar, never through it.

use std::io::{self, IsTerminal, Write};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

/// The bar on screen, if any: the log writer prints above it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The writer for `tracing`: stderr, suspending the progress bar around each line.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Progress of a loop of `total` units.
pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: usize,
}

impl Progress {
    /// A bar starting at `done` of `total` if stderr is a terminal; otherwise `update` logs a
    /// line every `log_every` units (0: never).
    pub fn new(total: usize, done: usize, log_every: usize) -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64).with_position(done as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
            *ACTIVE_BAR.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
            bar
        });
        Progress { bar, log_every }
    }

    /// `done` units are finished; `message` describes the latest one.
    pub fn update(&self, done: usize, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(message.to_string());
            }
            None if self.log_every > 0 && (done.is_multiple_of(self.log_every) || done == 1) => {
                info!("{message}");
            }
            None => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            *ACTIVE_BAR.lock().unwrap_or_else(PoisonError::into_inner) = None;
            bar.finish_and_clear();
        }
    }
}
