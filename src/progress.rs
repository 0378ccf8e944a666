//! Progress output for long work: a progress bar where stderr is a terminal, periodic log
//! lines where it is not (CI, files), and log lines that print above the bar, never through it.

use std::io::{self, IsTerminal, Write};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::info;

/// The bar on screen, if any: the log writer prints above it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// While an [`Overall`] bar is on screen: the group it and each loop's bar are drawn in.
static OVERALL: Mutex<Option<MultiProgress>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn overall_group() -> Option<MultiProgress> {
    OVERALL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("static template")
        .progress_chars("=> ")
}

/// The writer for `tracing`: stderr, suspending the progress bar around each line.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match active_bar() {
            _ if let Some(group) = overall_group() => group.suspend(|| io::stderr().write(buf)),
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
            let mut bar = ProgressBar::new(total as u64).with_position(done as u64);
            if let Some(group) = overall_group() {
                bar = group.add(bar);
            }
            bar.set_style(bar_style("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}"));
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

/// Progress over a sequence of long tasks (a study's trials), above each task's own
/// [`Progress`]: a bar with the tasks done and an estimate of the time left where stderr is a
/// terminal, a log line after each task where it is not.
pub struct Overall {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    /// Tasks finished since this started, and when it started: the pace of the estimate.
    finished_here: usize,
    started: Instant,
}

impl Overall {
    /// `done` of `total` tasks are already finished (before this process started).
    pub fn new(total: usize, done: usize) -> Overall {
        let bar = io::stderr().is_terminal().then(|| {
            let group = MultiProgress::new();
            let bar = group.add(ProgressBar::new(total as u64).with_position(done as u64));
            bar.set_style(bar_style(
                "{bar:30} {pos}/{len} trials [{elapsed_precise}, ~{eta} left] {msg}",
            ));
            *OVERALL.lock().unwrap_or_else(PoisonError::into_inner) = Some(group);
            bar
        });
        Overall {
            bar,
            total,
            done,
            finished_here: 0,
            started: Instant::now(),
        }
    }

    /// Seconds left at the pace of the tasks finished so far in this process.
    fn seconds_left(&self) -> Option<f64> {
        (self.finished_here > 0).then(|| {
            let pace = self.started.elapsed().as_secs_f64() / self.finished_here as f64;
            pace * (self.total - self.done) as f64
        })
    }

    /// One more task is finished; `message` says how it went.
    pub fn finish_one(&mut self, message: &str) {
        self.done += 1;
        self.finished_here += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done as u64);
                bar.set_message(message.to_string());
            }
            None => {
                let left = self.seconds_left().map_or(String::new(), |s| {
                    format!(", about {:.0} min left", s / 60.0)
                });
                info!("{}/{} done{left}: {message}", self.done, self.total);
            }
        }
    }
}

impl Drop for Overall {
    fn drop(&mut self) {
        *OVERALL.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
