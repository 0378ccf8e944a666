//! Download of the GPT-2-tokenised FineWeb-10B shards the NanoGPT speedrun trains on, from the
//! Hugging Face dataset `kjj0/fineweb10B-gpt2` (or any server laid out the same way).
//!
//! Each file goes to `NAME.part` first: an interrupted download resumes from where it stopped
//! with an HTTP range request, and only a complete file that passes [`Shard::open`]'s checks is
//! renamed to `NAME`, so a shard under its final name is always whole and valid.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tracing::{info, warn};

use super::shard::Shard;
use crate::progress::Progress;

pub const DEFAULT_BASE_URL: &str =
    "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main";
/// Where `speedrun train` looks for FineWeb shards by default.
pub const DEFAULT_DIR: &str = "data/fineweb10B";
pub const DEFAULT_RETRIES: usize = 5;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts (unless `backoff` itself is longer).
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Bytes read from the network per write to disk.
const BUFFER_BYTES: usize = 1 << 20;
/// Least time between two updates of the progress bar.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
const MB: f64 = 1e6;

/// What to download, where from and how persistently.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Directory the shards go into; created if missing.
    pub dir: PathBuf,
    /// Training shards to fetch (`fineweb_train_000001.bin` ..= N) besides the validation shard.
    pub train_shards: usize,
    /// Files are fetched from `{base_url}/{file}`.
    pub base_url: String,
    /// Further attempts after a network error, timeout, truncated transfer, HTTP 5xx, 408 or 429.
    /// The count is of consecutive attempts that received nothing: one that brought new bytes
    /// resets it.
    pub retries: usize,
    /// Limit on connecting and on each wait for data from the server (the whole download may
    /// take much longer).
    pub timeout: Duration,
    /// Wait before the first retry; it doubles on each further one, up to 30 s.
    pub backoff: Duration,
    /// Tokens in the files must be below this (GPT-2: 50257).
    pub vocab_size: usize,
}

impl DownloadOptions {
    /// `train_shards` training shards and the validation shard into `dir`, from
    /// [`DEFAULT_BASE_URL`], with the default retries, timeout and backoff.
    pub fn new(dir: impl Into<PathBuf>, train_shards: usize) -> DownloadOptions {
        DownloadOptions {
            dir: dir.into(),
            train_shards,
            base_url: DEFAULT_BASE_URL.to_string(),
            retries: DEFAULT_RETRIES,
            timeout: DEFAULT_TIMEOUT,
            backoff: DEFAULT_BACKOFF,
            vocab_size: crate::model::config::GPT2_VOCAB,
        }
    }
}

/// What [`download`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSummary {
    /// Every requested shard, validation first, all now complete and valid.
    pub files: Vec<PathBuf>,
    /// Bytes received from the network in this run.
    pub downloaded_bytes: u64,
    /// Files that were already complete and valid (no request made).
    pub skipped: usize,
}

/// The dataset's file names: the validation shard, then training shards 1..=`train_shards`.
pub fn shard_names(train_shards: usize) -> Vec<String> {
    std::iter::once("fineweb_val_000000.bin".to_string())
        .chain((1..=train_shards).map(|i| format!("fineweb_train_{i:06}.bin")))
        .collect()
}

/// Fetches the validation shard and `options.train_shards` training shards into
/// `options.dir`, skipping files already there and valid, resuming partial ones. Stops at the
/// first file that cannot be fetched; files finished before it stay.
pub fn download(options: &DownloadOptions) -> Result<DownloadSummary> {
    fs::create_dir_all(&options.dir)
        .with_context(|| format!("{}: cannot create directory", options.dir.display()))?;
    let agent = make_agent(options.timeout);
    let names = shard_names(options.train_shards);
    let mut summary = DownloadSummary {
        files: Vec::with_capacity(names.len()),
        downloaded_bytes: 0,
        skipped: 0,
    };
    for (i, name) in names.iter().enumerate() {
        let path = options.dir.join(name);
        let label = format!("{name} ({}/{})", i + 1, names.len());
        let skipped = fetch_shard(
            &agent,
            options,
            &label,
            name,
            &path,
            &mut summary.downloaded_bytes,
        )?;
        summary.skipped += usize::from(skipped);
        summary.files.push(path);
    }
    Ok(summary)
}

fn make_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        // Statuses are handled here: 206, 416, retryable 5xx/429 and fatal 4xx differ.
        .http_status_as_error(false)
        .user_agent(concat!("speedrun/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(timeout))
        .timeout_connect(Some(timeout))
        .timeout_send_request(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .build()
        .new_agent()
}

/// `{base_url}/{name}`, whether or not the base ends in a slash.
fn shard_url(base_url: &str, name: &str) -> String {
    format!("{}/{name}", base_url.trim_end_matches('/'))
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Makes `path` a complete, valid shard. Returns whether it already was one (skipped).
fn fetch_shard(
    agent: &ureq::Agent,
    options: &DownloadOptions,
    label: &str,
    name: &str,
    path: &Path,
    downloaded: &mut u64,
) -> Result<bool> {
    if path.exists() {
        match Shard::open(path, options.vocab_size) {
            Ok(_) => {
                info!("{label}: already downloaded and valid");
                return Ok(true);
            }
            Err(e) => warn!("{e}; downloading it again"),
        }
    }
    let part = part_path(path);
    let url = shard_url(&options.base_url, name);
    // A download that finished but was not renamed (interrupted just before) is used as it is.
    if part.exists() && Shard::open(&part, options.vocab_size).is_ok() {
        info!("{label}: {} is complete, using it", part.display());
        return finish(&part, path).map(|()| false);
    }
    let mut meter = Meter::new(name);
    let mut second_try = false;
    loop {
        let received = transfer(agent, options, label, &url, &part, &mut meter)
            .with_context(|| format!("{}: download failed", path.display()))?;
        *downloaded += received;
        match Shard::open(&part, options.vocab_size) {
            Ok(shard) => {
                let bytes = (shard.len() * 2 + super::shard::HEADER_BYTES) as u64;
                drop(shard);
                finish(&part, path)?;
                meter.done(label, bytes);
                return Ok(false);
            }
            Err(e) => {
                let _ = fs::remove_file(&part);
                let problem = format!(
                    "{}: the file downloaded from {url} is not a valid token shard: {e}",
                    path.display()
                );
                if second_try {
                    bail!("{problem} (deleted it; downloaded twice, giving up)");
                }
                // Resuming a stale or damaged partial file can give this; a fresh copy not.
                warn!("{problem}; deleted it, downloading it once more from the start");
                second_try = true;
            }
        }
    }
}

/// Syncs `part` and renames it to `path` durably.
fn finish(part: &Path, path: &Path) -> Result<()> {
    File::open(part)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: cannot sync to disk", part.display()))?;
    fs::rename(part, path).with_context(|| {
        format!(
            "cannot rename {} to {}",
            part.display(),
            path.file_name().unwrap_or_default().to_string_lossy()
        )
    })?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("{}: cannot sync directory", dir.display()))?;
    }
    Ok(())
}

/// Why one HTTP exchange did not complete the file.
enum Failure {
    /// Worth another attempt after a pause (network, timeout, truncation, 5xx, 408, 429).
    Retry {
        error: anyhow::Error,
        retry_after: Option<Duration>,
    },
    /// The partial file cannot be continued: delete it and start from zero.
    Restart(anyhow::Error),
    /// Retrying cannot help (4xx, disk errors, a bad URL).
    Fatal(anyhow::Error),
}

impl Failure {
    fn retry(error: anyhow::Error) -> Failure {
        Failure::Retry {
            error,
            retry_after: None,
        }
    }
}

fn partial_len(part: &Path) -> Result<u64> {
    match fs::metadata(part) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(anyhow!(e).context(format!("{}: cannot read metadata", part.display()))),
    }
}

/// Brings `part` to the whole remote file, retrying as `options` says. Returns the bytes
/// received.
fn transfer(
    agent: &ureq::Agent,
    options: &DownloadOptions,
    label: &str,
    url: &str,
    part: &Path,
    meter: &mut Meter,
) -> Result<u64> {
    let mut received_total = 0;
    let mut failures = 0;
    let mut restarted = false;
    loop {
        let offset = partial_len(part)?;
        let mut received = 0;
        let result = attempt(agent, url, part, offset, &mut received, meter);
        received_total += received;
        let (error, retry_after) = match result {
            Ok(()) => return Ok(received_total),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Restart(error)) => {
                if restarted {
                    return Err(error.context("again after restarting from zero"));
                }
                warn!("{label}: {error:#}; deleting the partial file, starting from zero");
                fs::remove_file(part)
                    .with_context(|| format!("{}: cannot delete", part.display()))?;
                restarted = true;
                continue;
            }
            Err(Failure::Retry { error, retry_after }) => (error, retry_after),
        };
        if received > 0 {
            failures = 0;
        }
        failures += 1;
        if failures > options.retries {
            let kept = match partial_len(part)? {
                0 => String::new(),
                n => format!(
                    "; the {} received so far stay in {} and the next run resumes from there",
                    format_bytes(n),
                    part.display()
                ),
            };
            return Err(error.context(format!(
                "gave up after {failures} attempt{} in a row without progress{kept}",
                if failures == 1 { "" } else { "s" }
            )));
        }
        // A server's Retry-After is honoured up to the backoff cap.
        let delay = backoff_delay(options.backoff, failures).max(
            retry_after
                .unwrap_or_default()
                .min(BACKOFF_CAP.max(options.backoff)),
        );
        warn!(
            "{label}: {error:#}; retry {failures} of {} in {:.1} s",
            options.retries,
            delay.as_secs_f64()
        );
        std::thread::sleep(delay);
    }
}

/// `base`·2^(failures−1), at most 30 s (or `base` if that is longer).
fn backoff_delay(base: Duration, failures: usize) -> Duration {
    let cap = BACKOFF_CAP.max(base);
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

/// One GET of `url` from byte `offset`, appending to (or, if the server sends the whole file,
/// rewriting) `part`. `received` counts the bytes that reached the file, even on failure.
fn attempt(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    offset: u64,
    received: &mut u64,
    meter: &mut Meter,
) -> Result<(), Failure> {
    // Identity encoding: the bytes counted are the file's, comparable with Content-Length.
    let mut request = agent.get(url).header("Accept-Encoding", "identity");
    if offset > 0 {
        request = request.header("Range", format!("bytes={offset}-"));
    }
    let response = request.call().map_err(|e| request_failure(url, e))?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let start = match status.as_u16() {
        200 => {
            if offset > 0 {
                info!("{url}: the server ignored the range request; downloading it all again");
            }
            0
        }
        206 => {
            let range_start = header("content-range").and_then(|v| content_range_start(&v));
            match range_start {
                Some(s) if s != offset => {
                    return Err(Failure::Restart(anyhow!(
                        "{url}: asked for bytes from {offset}, the server sent bytes from {s}"
                    )));
                }
                _ => offset,
            }
        }
        416 if offset > 0 => {
            return Err(Failure::Restart(anyhow!(
                "{url}: HTTP {status}: the server has no bytes from {offset} on (the partial \
                 file is as long as the whole file, or longer)"
            )));
        }
        408 | 429 | 500..=599 => {
            return Err(Failure::Retry {
                error: anyhow!("{url}: HTTP {status}"),
                retry_after: header("retry-after")
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs),
            });
        }
        _ => {
            let hint = match status.as_u16() {
                404 => " (the dataset has fewer shards?)",
                401 | 403 => " (private or gated dataset, or a wrong base URL?)",
                _ => "",
            };
            return Err(Failure::Fatal(anyhow!("{url}: HTTP {status}{hint}")));
        }
    };
    let identity = header("content-encoding").is_none_or(|v| v.eq_ignore_ascii_case("identity"));
    let body = response.into_body();
    let expected = body.content_length().filter(|_| identity);
    meter.begin(start, expected.map(|n| start + n));

    let disk = |action: &'static str| {
        move |e: io::Error| {
            Failure::Fatal(anyhow!(e).context(format!("{}: cannot {action}", part.display())))
        }
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(disk("open"))?;
    // Drops anything past `start`: all of it when the server sent the whole file.
    file.set_len(start).map_err(disk("truncate"))?;
    file.seek(SeekFrom::Start(start)).map_err(disk("seek in"))?;

    let mut reader = body.into_reader();
    let mut buf = vec![0u8; BUFFER_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::retry(anyhow!(
                    "{url}: transfer broke off after {} bytes{}: {e}",
                    start + *received,
                    expected.map_or(String::new(), |n| format!(" of {}", start + n))
                )));
            }
        };
        file.write_all(&buf[..n]).map_err(disk("write"))?;
        *received += n as u64;
        meter.update(start + *received);
    }
    if let Some(n) = expected
        && *received != n
    {
        return Err(Failure::retry(anyhow!(
            "{url}: connection closed after {} of {} bytes",
            start + *received,
            start + n
        )));
    }
    file.sync_all().map_err(disk("sync"))?;
    Ok(())
}

/// Classifies an error from sending the request or reading the response head.
fn request_failure(url: &str, error: ureq::Error) -> Failure {
    let fatal = matches!(
        error,
        ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::TooManyRedirects
            | ureq::Error::RedirectFailed
    );
    let error = anyhow!(error).context(url.to_string());
    if fatal {
        Failure::Fatal(error)
    } else {
        Failure::retry(error)
    }
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL` header.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// Progress of one file: a bar on a terminal (in MB, with rate and time left), and a log line
/// when the file is done.
struct Meter {
    name: String,
    /// The bar and the total (bytes) it was made for.
    bar: Option<(Progress, u64)>,
    started: Instant,
    /// Bytes received in this run and the file position when the transfer began.
    received: u64,
    position: u64,
    last_draw: Option<Instant>,
}

impl Meter {
    fn new(name: &str) -> Meter {
        Meter {
            name: name.to_string(),
            bar: None,
            started: Instant::now(),
            received: 0,
            position: 0,
            last_draw: None,
        }
    }

    /// A transfer starts at byte `position` of a file of `total` bytes (if known).
    fn begin(&mut self, position: u64, total: Option<u64>) {
        self.position = position;
        let total = total.unwrap_or(0).max(position);
        if self.bar.as_ref().is_none_or(|(_, t)| *t != total) {
            self.bar = None; // clears the old bar before making the new one
            let bar = Progress::new(mb_ceil(total), mb_floor(position), 0);
            self.bar = Some((bar, total));
        }
        self.last_draw = None;
        self.update(position);
    }

    fn update(&mut self, position: u64) {
        self.received += position.saturating_sub(self.position);
        self.position = position;
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < PROGRESS_INTERVAL)
        {
            return;
        }
        self.last_draw = Some(now);
        let Some((bar, total)) = &self.bar else {
            return;
        };
        let rate = self.received as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let left = if rate > 0.0 && *total >= position {
            format!(
                ", {} left",
                format_duration((*total - position) as f64 / rate)
            )
        } else {
            String::new()
        };
        bar.update(
            mb_floor(position),
            &format!("MB {}, {:.1} MB/s{left}", self.name, rate / MB),
        );
    }

    /// The file is complete: `bytes` long.
    fn done(&mut self, label: &str, bytes: u64) {
        self.bar = None;
        let secs = self.started.elapsed().as_secs_f64();
        let resumed = if self.received < bytes {
            format!(" ({} of it received now)", format_bytes(self.received))
        } else {
            String::new()
        };
        info!(
            "{label}: {}{resumed} in {secs:.1} s, {:.1} MB/s",
            format_bytes(bytes),
            self.received as f64 / MB / secs.max(1e-3),
        );
    }
}

fn mb_floor(bytes: u64) -> usize {
    (bytes / 1_000_000) as usize
}

fn mb_ceil(bytes: u64) -> usize {
    bytes.div_ceil(1_000_000) as usize
}

fn format_bytes(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / MB)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

fn format_duration(secs: f64) -> String {
    let secs = secs.round() as u64;
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::write_shard;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Cursor};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    const VOCAB: usize = 50257;

    /// The bytes of a valid shard of `tokens` tokens, different for each `seed`.
    fn shard_bytes(tokens: usize, seed: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.bin");
        let data: Vec<u16> = (0..tokens as u64)
            .map(|i| ((i * 7919 + seed * 104_729) % VOCAB as u64) as u16)
            .collect();
        write_shard(&path, &data).expect("write shard");
        fs::read(&path).expect("read shard")
    }

    /// Served files for `shard_names(train)`, each a distinct valid shard of ~13 kB.
    fn dataset(train: usize) -> Vec<(String, Vec<u8>)> {
        shard_names(train)
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name, shard_bytes(6000 + 17 * i, i as u64)))
            .collect()
    }

    fn options(dir: &Path, train: usize, base_url: &str) -> DownloadOptions {
        DownloadOptions {
            dir: dir.to_path_buf(),
            train_shards: train,
            base_url: base_url.to_string(),
            retries: 3,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(1),
            vocab_size: VOCAB,
        }
    }

    /// How the test server answers one request.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        /// The file, honouring a range (206, or 416 past the end).
        Serve,
        /// The whole file with 200, whatever the range.
        IgnoreRange,
        /// Only this status, with a short text body.
        Status(u16),
        /// Like `Serve`, but only the first `sent` bytes of the body, then silence with the
        /// connection open: the client must time out.
        Stall { sent: usize },
    }

    /// One request the server saw: the file and the first byte of its range, if any.
    #[derive(Clone, Debug, PartialEq)]
    struct Seen {
        file: String,
        range_start: Option<u64>,
    }

    /// A tiny_http server on 127.0.0.1 serving `files`; `reply(file, n)` picks the answer to the
    /// n-th (0-based) request for `file`.
    struct TestServer {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        server: Arc<tiny_http::Server>,
        thread: Option<JoinHandle<()>>,
    }

    impl TestServer {
        fn start(
            files: &[(String, Vec<u8>)],
            reply: impl Fn(&str, usize) -> Reply + Send + 'static,
        ) -> TestServer {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
            let addr = server.server_addr().to_ip().expect("ip address");
            let files: HashMap<String, Vec<u8>> = files.iter().cloned().collect();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let thread = {
                let (server, seen) = (server.clone(), seen.clone());
                std::thread::spawn(move || {
                    for request in server.incoming_requests() {
                        let file = request.url().trim_start_matches('/').to_string();
                        let range_start = request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv("Range"))
                            .map(|h| {
                                let v = h.value.as_str();
                                let v = v.strip_prefix("bytes=").expect("bytes range");
                                v.trim_end_matches('-').parse().expect("open range")
                            });
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            let n = seen.iter().filter(|s: &&Seen| s.file == file).count();
                            seen.push(Seen {
                                file: file.clone(),
                                range_start,
                            });
                            n
                        };
                        let response = match files.get(&file) {
                            None => text_response(404),
                            Some(body) => respond(body, range_start, reply(&file, n)),
                        };
                        let _ = request.respond(response);
                    }
                })
            };
            TestServer {
                url: format!("http://{addr}"),
                seen,
                server,
                thread: Some(thread),
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn requests_for(&self, file: &str) -> Vec<Option<u64>> {
            self.seen()
                .into_iter()
                .filter(|s| s.file == file)
                .map(|s| s.range_start)
                .collect()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    type TestResponse = tiny_http::Response<Cursor<Vec<u8>>>;

    fn header(name: &str, value: &str) -> tiny_http::Header {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header")
    }

    /// A response that declares `length` bytes (Content-Length, never chunked) but carries
    /// `body`, which may be shorter.
    fn response(
        status: u16,
        body: Vec<u8>,
        length: usize,
        headers: Vec<tiny_http::Header>,
    ) -> TestResponse {
        tiny_http::Response::new(
            tiny_http::StatusCode(status),
            headers,
            Cursor::new(body),
            Some(length),
            None,
        )
        .with_chunked_threshold(usize::MAX)
    }

    fn text_response(status: u16) -> TestResponse {
        let body = format!("status {status}").into_bytes();
        let len = body.len();
        response(status, body, len, Vec::new())
    }

    fn respond(file: &[u8], range_start: Option<u64>, reply: Reply) -> TestResponse {
        let len = file.len();
        let range_start = match reply {
            Reply::Status(status) => return text_response(status),
            Reply::IgnoreRange => None,
            Reply::Serve | Reply::Stall { .. } => range_start.map(|s| s as usize),
        };
        let (status, start, headers) = match range_start {
            None => (200, 0, Vec::new()),
            Some(s) if s >= len => {
                let range = header("Content-Range", &format!("bytes */{len}"));
                return response(416, Vec::new(), 0, vec![range]);
            }
            Some(s) => {
                let range = format!("bytes {s}-{}/{len}", len - 1);
                (206, s, vec![header("Content-Range", &range)])
            }
        };
        let body = &file[start..];
        let sent = match reply {
            Reply::Stall { sent } => sent.min(body.len()),
            _ => body.len(),
        };
        response(status, body[..sent].to_vec(), body.len(), headers)
    }

    fn assert_files(dir: &Path, files: &[(String, Vec<u8>)]) {
        for (name, bytes) in files {
            let got = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == *bytes, "{name} differs from the served file");
        }
        let mut left: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        expected.sort();
        assert_eq!(left, expected, "unexpected files (a .part left?)");
    }

    fn total_bytes(files: &[(String, Vec<u8>)]) -> u64 {
        files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    #[test]
    fn shard_names_are_val_then_train_from_one() {
        assert_eq!(shard_names(0), ["fineweb_val_000000.bin"]);
        assert_eq!(
            shard_names(3),
            [
                "fineweb_val_000000.bin",
                "fineweb_train_000001.bin",
                "fineweb_train_000002.bin",
                "fineweb_train_000003.bin",
            ]
        );
        assert_eq!(shard_names(103)[103], "fineweb_train_000103.bin");
    }

    #[test]
    fn urls_join_with_one_slash_and_parts_sit_beside_the_file() {
        assert_eq!(
            shard_url(DEFAULT_BASE_URL, "fineweb_val_000000.bin"),
            "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main/fineweb_val_000000.bin"
        );
        assert_eq!(shard_url("http://h/x/", "a.bin"), "http://h/x/a.bin");
        assert_eq!(
            part_path(Path::new("d/fineweb_val_000000.bin")),
            Path::new("d/fineweb_val_000000.bin.part")
        );
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(
            backoff_delay(Duration::from_secs(1), 1),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff_delay(Duration::from_secs(1), 3),
            Duration::from_secs(4)
        );
        assert_eq!(backoff_delay(Duration::from_secs(1), 9), BACKOFF_CAP);
        assert_eq!(backoff_delay(Duration::from_secs(1), 1000), BACKOFF_CAP);
    }

    #[test]
    fn downloads_val_and_train_shards_into_an_empty_dir() {
        let files = dataset(2);
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("new").join("fineweb10B");
        let summary = download(&options(&out, 2, &server.url)).expect("download");
        assert_files(&out, &files);
        assert_eq!(
            summary.files,
            shard_names(2)
                .iter()
                .map(|n| out.join(n))
                .collect::<Vec<_>>()
        );
        assert_eq!(summary.skipped, 0);
        assert_eq!(summary.downloaded_bytes, total_bytes(&files));
        let order: Vec<String> = server.seen().into_iter().map(|s| s.file).collect();
        assert_eq!(order, shard_names(2), "one request per file, val first");
        assert!(server.seen().iter().all(|s| s.range_start.is_none()));
    }

    #[test]
    fn resumes_a_partial_download_with_a_range_request() {
        let files = dataset(1);
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let (name, bytes) = &files[1];
        let k = 5000;
        fs::write(dir.path().join(format!("{name}.part")), &bytes[..k]).expect("write part");
        let summary = download(&options(dir.path(), 1, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(server.requests_for(name), [Some(k as u64)]);
        assert_eq!(server.requests_for(&files[0].0), [None]);
        assert_eq!(summary.downloaded_bytes, total_bytes(&files) - k as u64);
    }

    #[test]
    fn server_ignoring_the_range_gives_the_whole_file_again() {
        let files = dataset(1);
        let server = TestServer::start(&files, |_, _| Reply::IgnoreRange);
        let dir = tempfile::tempdir().expect("tempdir");
        let (name, bytes) = &files[0];
        // A partial file whose bytes are wrong: starting over must drop them all.
        let mut junk = bytes[..3000].to_vec();
        junk[2000..].fill(0xAB);
        fs::write(dir.path().join(format!("{name}.part")), junk).expect("write part");
        let summary = download(&options(dir.path(), 1, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(server.requests_for(name), [Some(3000)]);
        assert_eq!(summary.downloaded_bytes, total_bytes(&files));
    }

    #[test]
    fn stalled_transfer_times_out_and_resumes_from_what_arrived() {
        let files = dataset(1);
        let stalled = files[1].0.clone();
        let server = TestServer::start(&files, move |file, n| {
            if file == stalled && n == 0 {
                Reply::Stall { sent: 4000 }
            } else {
                Reply::Serve
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path(), 1, &server.url);
        opts.timeout = Duration::from_millis(500);
        let summary = download(&opts).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(server.requests_for(&files[1].0), [None, Some(4000)]);
        assert_eq!(summary.downloaded_bytes, total_bytes(&files));
    }

    /// A bare HTTP server on 127.0.0.1 that answers each connection with `answer(n, range)`'s
    /// bytes and closes it; returns its URL and the ranges it saw.
    fn raw_server(
        connections: usize,
        answer: impl Fn(usize, Option<u64>) -> Vec<u8> + Send + 'static,
    ) -> (String, JoinHandle<Vec<Option<u64>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let thread = std::thread::spawn(move || {
            let mut ranges = Vec::new();
            for n in 0..connections {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut range = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("read request");
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((key, value)) = line.split_once(':')
                        && key.eq_ignore_ascii_case("range")
                    {
                        let v = value.trim().strip_prefix("bytes=").expect("bytes range");
                        range = Some(v.trim_end_matches('-').parse().expect("open range"));
                    }
                }
                ranges.push(range);
                let mut stream = stream;
                stream.write_all(&answer(n, range)).expect("write response");
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            ranges
        });
        (url, thread)
    }

    #[test]
    fn connection_closed_before_content_length_is_retried_and_resumed() {
        let file = shard_bytes(6000, 7);
        let len = file.len();
        let half = len / 2;
        let served = file.clone();
        let (url, server) = raw_server(2, move |n, range| {
            let mut out = if n == 0 {
                // Declares the whole file, sends half, closes.
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                    .into_bytes()
            } else {
                let s = range.expect("range on the retry") as usize;
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                     Content-Range: bytes {s}-{}/{len}\r\nConnection: close\r\n\r\n",
                    len - s,
                    len - 1
                )
                .into_bytes()
            };
            let body = if n == 0 {
                &served[..half]
            } else {
                &served[range.unwrap_or(0) as usize..]
            };
            out.extend_from_slice(body);
            out
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = download(&options(dir.path(), 0, &url)).expect("download");
        assert_eq!(server.join().expect("server"), [None, Some(half as u64)]);
        assert_files(dir.path(), &[(shard_names(0)[0].clone(), file)]);
        assert_eq!(summary.downloaded_bytes, len as u64);
    }

    #[test]
    fn server_errors_and_rate_limits_are_retried() {
        let files = dataset(1);
        let flaky = files[1].0.clone();
        let server = TestServer::start(&files, move |file, n| match (file == flaky, n) {
            (true, 0) => Reply::Status(500),
            (true, 1) => Reply::Status(503),
            (true, 2) => Reply::Status(429),
            _ => Reply::Serve,
        });
        let dir = tempfile::tempdir().expect("tempdir");
        download(&options(dir.path(), 1, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(server.requests_for(&files[1].0).len(), 4);
    }

    #[test]
    fn persistent_server_error_gives_up_after_the_retries_naming_the_file() {
        let files = dataset(1);
        let server = TestServer::start(&files, |_, _| Reply::Status(500));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path(), 1, &server.url);
        opts.retries = 2;
        let err = download(&opts).expect_err("must fail");
        let msg = format!("{err:#}");
        let name = &files[0].0;
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains(&format!("{}/{name}", server.url)), "{msg}");
        assert!(msg.contains("HTTP 500 Internal Server Error"), "{msg}");
        assert!(msg.contains("3 attempts"), "{msg}");
        // The first attempt and two retries; nothing after the failed file.
        assert_eq!(server.seen().len(), 3);
        assert_eq!(fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }

    #[test]
    fn not_found_fails_at_once_naming_the_file_and_status() {
        let mut files = dataset(2);
        files.pop(); // the server lacks fineweb_train_000002.bin
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = download(&options(dir.path(), 2, &server.url)).expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!(
                "{}/fineweb_train_000002.bin: HTTP 404 Not Found (the dataset has fewer shards?)",
                server.url
            )),
            "{msg}"
        );
        assert!(
            msg.contains(
                &dir.path()
                    .join("fineweb_train_000002.bin")
                    .display()
                    .to_string()
            ),
            "{msg}"
        );
        assert_eq!(server.requests_for("fineweb_train_000002.bin").len(), 1);
        // The shards before it are done.
        assert_files(dir.path(), &files);
    }

    #[test]
    fn corrupt_served_shard_is_rejected_and_nothing_is_left() {
        let mut files = dataset(0);
        files[0].1[0] ^= 0xFF; // wrong magic
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = download(&options(dir.path(), 0, &server.url)).expect_err("must fail");
        let msg = format!("{err:#}");
        let name = &files[0].0;
        assert!(
            msg.contains(&dir.path().join(name).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains(&format!("{}/{name}", server.url)), "{msg}");
        assert!(msg.contains("bad magic"), "{msg}");
        // Downloaded once more from scratch, then given up.
        assert_eq!(server.requests_for(name), [None, None]);
        assert_eq!(fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }

    #[test]
    fn existing_valid_file_is_skipped_without_a_request() {
        let files = dataset(1);
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let (val, val_bytes) = &files[0];
        fs::write(dir.path().join(val), val_bytes).expect("write val");
        let summary = download(&options(dir.path(), 1, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(summary.skipped, 1);
        assert_eq!(summary.files.len(), 2);
        assert_eq!(summary.downloaded_bytes, files[1].1.len() as u64);
        assert_eq!(server.requests_for(val), []);
        assert_eq!(server.seen().len(), 1);
    }

    #[test]
    fn existing_invalid_file_is_downloaded_again() {
        let files = dataset(0);
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let (val, bytes) = &files[0];
        fs::write(dir.path().join(val), &bytes[..bytes.len() - 2]).expect("write truncated");
        let summary = download(&options(dir.path(), 0, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(summary.skipped, 0);
        assert_eq!(server.requests_for(val), [None]);
    }

    #[test]
    fn part_longer_than_the_file_restarts_from_zero_after_416() {
        let files = dataset(0);
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let (val, bytes) = &files[0];
        let mut long = bytes.clone();
        long.extend_from_slice(&[1, 2, 3, 4]);
        fs::write(dir.path().join(format!("{val}.part")), &long).expect("write part");
        download(&options(dir.path(), 0, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(server.requests_for(val), [Some(long.len() as u64), None]);
    }

    #[test]
    fn complete_part_is_renamed_without_a_request() {
        let files = dataset(0);
        let server = TestServer::start(&files, |_, _| Reply::Serve);
        let dir = tempfile::tempdir().expect("tempdir");
        let (val, bytes) = &files[0];
        fs::write(dir.path().join(format!("{val}.part")), bytes).expect("write part");
        let summary = download(&options(dir.path(), 0, &server.url)).expect("download");
        assert_files(dir.path(), &files);
        assert_eq!(summary.downloaded_bytes, 0);
        assert_eq!(server.seen(), []);
    }

    #[test]
    fn unreachable_server_is_retried_then_reported() {
        // A port nobody listens on: bind one, note it, free it.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path(), 0, &format!("http://127.0.0.1:{port}"));
        opts.retries = 1;
        let err = download(&opts).expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("fineweb_val_000000.bin"), "{msg}");
        assert!(msg.contains("2 attempts"), "{msg}");
    }
}
