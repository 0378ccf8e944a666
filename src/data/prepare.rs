//! Text to GPT-2 token shards (`speedrun data prepare`).
//!
//! Inputs are plain text files (each one document) and JSON Lines files (`.jsonl`, `.json`,
//! `.ndjson`: one JSON object per line, the document in its string `text` field). Every
//! document is encoded with the GPT-2 byte-level BPE (tiktoken-rs `r50k_base`, OpenAI's
//! `gpt2` encoding, `encode_ordinary`: a literal `<|endoftext|>` in a document is ordinary
//! text), preceded by the end-of-text token 50256, and the documents' tokens are concatenated
//! in input order into one stream.
//!
//! The stream is cut by count, as llm.c's `fineweb.py` fills its shards: the first
//! `val_tokens` tokens go to the validation shards `{prefix}_val_000000.bin`, …, the rest to
//! the training shards `{prefix}_train_000001.bin`, … (numbered from 1, like FineWeb's), each
//! shard holding at most `shard_tokens` tokens. Cuts fall wherever the count says, mid-document
//! included.
//!
//! Encoding runs on all cores (rayon) over batches of documents, and long documents are cut
//! into pieces at points where the GPT-2 pre-tokenizer always splits (see `is_split_point`),
//! so the tokens are exactly those of encoding each document whole, in input order, whatever
//! the number of threads. Inputs are streamed: in memory are one shard being filled, the batch
//! being encoded and the next one being read (text files are read in chunks; a JSON line is
//! read whole).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::shard::write_shard;
use super::tokenizer::{END_OF_TEXT, encode};
use crate::progress::Progress;

/// The speedrun's 10,485,760 validation tokens plus the one more that validation reads for
/// the shifted targets, so `speedrun train --val-tokens 10485760` can use the val split.
pub const DEFAULT_VAL_TOKENS: usize = 10_485_760 + 1;
/// Tokens per shard, as FineWeb's shards.
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;
pub const DEFAULT_PREFIX: &str = "data";

/// Shard names have six digits.
const MAX_SHARDS: usize = 999_999;

/// Sizes of the streaming pipeline, in bytes of text.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// A text file is read in chunks of about this size.
    chunk_bytes: usize,
    /// Documents longer than this are encoded in pieces of about this size, in parallel.
    piece_bytes: usize,
    /// Text handed to the encoder at a time.
    batch_bytes: usize,
}

const TUNING: Tuning = Tuning {
    chunk_bytes: 1 << 20,
    piece_bytes: 1 << 16,
    batch_bytes: 32 << 20,
};

/// Whether the GPT-2 pre-tokenizer (`'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++|
/// ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s`) always puts a piece boundary at byte `k` of
/// `text`, so that encoding `text[..k]` and `text[k..]` separately gives the tokens of `text`:
/// true where a non-whitespace character is followed by an ASCII whitespace character.
///
/// Why: every piece that holds a non-whitespace character `c` is made of non-whitespace
/// characters after at most one leading space, so it ends at `c` when whitespace follows; the
/// pattern looks only forward (no look-behind, `\b` or `^`), so the matches from `k` on depend
/// only on `text[k..]`; and `text[..k]` ends in non-whitespace, so neither `\s++$` nor
/// `(?!\S)` can match differently at its end.
fn is_split_point(text: &[u8], k: usize) -> bool {
    if k == 0 || k >= text.len() || !matches!(text[k], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        return false;
    }
    if text[k - 1].is_ascii() {
        return !text[k - 1].is_ascii_whitespace() && text[k - 1] != 0x0b;
    }
    // The last (multi-byte) character before k: its lead byte is at most 3 bytes back.
    let start = (k.saturating_sub(4)..k)
        .rev()
        .find(|&i| text[i] & 0xC0 != 0x80)
        .unwrap_or(k - 1);
    match std::str::from_utf8(&text[start..k]) {
        Ok(s) => s.chars().next_back().is_some_and(|c| !c.is_whitespace()),
        Err(_) => false,
    }
}

/// The first split point (see [`is_split_point`]) at or after byte `from` of `text`.
fn split_point(text: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..text.len()).find(|&k| is_split_point(text, k))
}

/// `text` cut at split points into pieces of at least `piece_bytes` (the last may be shorter),
/// with their byte offsets in `text`; encoding the pieces one by one gives the tokens of
/// `text`.
fn pieces(text: &str, piece_bytes: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::with_capacity(text.len() / piece_bytes.max(1) + 1);
    let mut start = 0;
    while text.len() - start > piece_bytes {
        match split_point(&text.as_bytes()[start..], piece_bytes) {
            // A split point precedes an ASCII byte, so it is a character boundary.
            Some(k) => {
                out.push((start, &text[start..start + k]));
                start += k;
            }
            None => break,
        }
    }
    out.push((start, &text[start..]));
    out
}

// ---------------------------------------------------------------------------------------------
// Options, summary, errors

/// What `speedrun data prepare` does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrepareOptions {
    /// Text and JSON Lines files, read in this order.
    pub inputs: Vec<PathBuf>,
    /// The output directory (created if missing). It must not already hold `{prefix}_val_*.bin`
    /// or `{prefix}_train_*.bin` shards.
    pub out: PathBuf,
    /// Shard names are `{prefix}_val_NNNNNN.bin` and `{prefix}_train_NNNNNN.bin`.
    pub prefix: String,
    /// The first this many tokens of the stream form the val split (0: no val split).
    /// Validation reads one token more than it evaluates, for the shifted targets.
    pub val_tokens: usize,
    /// At most this many tokens per shard (1 ..= 2^31 - 1).
    pub shard_tokens: usize,
}

impl PrepareOptions {
    /// Options with the defaults: prefix `data`, [`DEFAULT_VAL_TOKENS`],
    /// [`DEFAULT_SHARD_TOKENS`].
    pub fn new(inputs: Vec<PathBuf>, out: impl Into<PathBuf>) -> PrepareOptions {
        PrepareOptions {
            inputs,
            out: out.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            val_tokens: DEFAULT_VAL_TOKENS,
            shard_tokens: DEFAULT_SHARD_TOKENS,
        }
    }

    /// Checks every option except the inputs' contents, so bad settings fail before reading.
    fn validate(&self) -> Result<(), PrepareError> {
        if self.inputs.is_empty() {
            return Err(PrepareError::NoInputs);
        }
        let bad = |field, value: String, expected| PrepareError::BadOption {
            field,
            value,
            expected,
        };
        if self.prefix.is_empty()
            || self.prefix.contains(['/', '\\', '\0'])
            || self.prefix.starts_with('.')
        {
            return Err(bad(
                "prefix",
                format!("'{}'", self.prefix),
                "a non-empty file name start without '/', '\\' or a leading '.'",
            ));
        }
        if self.shard_tokens == 0 || self.shard_tokens > i32::MAX as usize {
            return Err(bad(
                "shard_tokens",
                self.shard_tokens.to_string(),
                "between 1 and 2147483647, the most one shard can hold",
            ));
        }
        if self.val_tokens.div_ceil(self.shard_tokens) > MAX_SHARDS {
            return Err(bad(
                "val_tokens",
                self.val_tokens.to_string(),
                "at most 999999 shards of shard_tokens",
            ));
        }
        Ok(())
    }
}

/// What `prepare` read and wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrepareSummary {
    /// Documents read: one per text file, one per non-blank JSON line.
    pub documents: usize,
    /// Tokens written, end-of-text tokens included: `val_tokens + train_tokens`.
    pub tokens: u64,
    pub val_tokens: u64,
    pub train_tokens: u64,
    /// Bytes of input read.
    pub input_bytes: u64,
    pub val_files: Vec<PathBuf>,
    pub train_files: Vec<PathBuf>,
}

/// What can go wrong preparing shards. Messages name the file (and line) and say what was
/// found and expected.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("no input files given")]
    NoInputs,
    #[error("prepare option {field} is {value} (expected {expected})")]
    BadOption {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{}: is a directory (expected a text or JSON Lines file)", path.display())]
    IsDirectory { path: PathBuf },
    #[error("{}: invalid UTF-8 at byte offset {offset}", location(path, *line))]
    InvalidUtf8 {
        path: PathBuf,
        /// The JSON line, for JSON Lines files.
        line: Option<u64>,
        /// From the start of the file.
        offset: u64,
    },
    #[error(
        "{}:{line}: not valid JSON ({source}); JSON Lines input needs one JSON object per line",
        path.display()
    )]
    BadJson {
        path: PathBuf,
        line: u64,
        source: serde_json::Error,
    },
    #[error(
        "{}:{line}: not a JSON object with a string \"text\" field ({reason})",
        path.display()
    )]
    NoText {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "{}{}: tiktoken's GPT-2 pre-tokenizer gives up on this text, as tiktoken itself does (its regex fails on a run of about a million whitespace characters followed by more text): shorten such runs",
        location(path, *line),
        offset.map(|o| format!(" (the text from byte offset {o})")).unwrap_or_default()
    )]
    TokenizerFailed {
        path: PathBuf,
        line: Option<u64>,
        offset: Option<u64>,
    },
    #[error(
        "the inputs hold no documents (all JSON Lines files are empty or blank): nothing to write"
    )]
    NoDocuments,
    #[error(
        "the inputs hold {tokens} tokens ({documents} documents) but the val split takes the first {val_tokens} and the train split needs at least one more: give more text or fewer val tokens"
    )]
    TooFewTokens {
        tokens: u64,
        documents: usize,
        val_tokens: usize,
    },
    #[error(
        "{}: a shard from an earlier run, which the new shards could mix with: remove the old {prefix}_val_*.bin and {prefix}_train_*.bin, or use another output directory or prefix",
        path.display()
    )]
    StaleShard { path: PathBuf, prefix: String },
    #[error(
        "the train split needs more than {MAX_SHARDS} shards of {shard_tokens} tokens: use larger shards"
    )]
    TooManyShards { shard_tokens: usize },
}

fn location(path: &Path, line: Option<u64>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> PrepareError + use<> {
    let path = path.to_path_buf();
    move |source| PrepareError::Io {
        path,
        action,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Text to encode: a whole document, or a piece of one.
struct Item {
    text: String,
    /// The first piece of a document: an end-of-text token goes before it.
    starts_document: bool,
    /// Where the text comes from, for error messages: the index of its input file, its JSON
    /// line, and the byte offset in the file where the text (text files) or line starts.
    input: usize,
    line: Option<u64>,
    offset: u64,
}

/// Items handed to the encoder at once.
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    text_bytes: usize,
    /// Input bytes read once this batch is done, counted over all inputs.
    input_position: u64,
}

/// Why reading stopped early.
enum ReadStop {
    Failed(PrepareError),
    /// The encoder stopped (it failed) and dropped its end of the channel.
    Disconnected,
}

impl From<PrepareError> for ReadStop {
    fn from(e: PrepareError) -> ReadStop {
        ReadStop::Failed(e)
    }
}

/// Collects items into batches and sends full ones to the encoder.
struct Batcher {
    tx: SyncSender<Batch>,
    batch: Batch,
    batch_bytes: usize,
    /// Input bytes of the files before the current one.
    file_start: u64,
}

impl Batcher {
    /// `item`, which ends at byte `file_position` of the current file.
    fn push(&mut self, item: Item, file_position: u64) -> Result<(), ReadStop> {
        self.batch.text_bytes += item.text.len();
        self.batch.items.push(item);
        self.batch.input_position = self.file_start + file_position;
        if self.batch.text_bytes >= self.batch_bytes {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), ReadStop> {
        let input_position = self.batch.input_position;
        let batch = std::mem::take(&mut self.batch);
        self.batch.input_position = input_position;
        self.tx.send(batch).map_err(|_| ReadStop::Disconnected)
    }
}

#[derive(Deserialize)]
struct JsonDocument {
    text: String,
}

enum JsonLineError {
    Invalid(serde_json::Error),
    NoText(String),
}

/// The `text` field of a JSON line holding an object.
fn parse_json_document(line: &str) -> Result<String, JsonLineError> {
    if line.trim_ascii_start().starts_with('{') {
        return match serde_json::from_str::<JsonDocument>(line) {
            Ok(document) => Ok(document.text),
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                Err(JsonLineError::NoText(e.to_string()))
            }
            Err(e) => Err(JsonLineError::Invalid(e)),
        };
    }
    // Not an object (serde would read an array as a struct's fields): say what it is.
    serde_json::from_str::<serde::de::IgnoredAny>(line).map_err(JsonLineError::Invalid)?;
    let kind = match line.trim_ascii_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    Err(JsonLineError::NoText(format!("the line is {kind}")))
}

fn is_json_lines(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jsonl", "json", "ndjson"].contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads every input in order into batches; the last batch is sent even if empty.
fn read_inputs(inputs: &[PathBuf], tuning: Tuning, tx: SyncSender<Batch>) -> Result<(), ReadStop> {
    let mut batcher = Batcher {
        tx,
        batch: Batch::default(),
        batch_bytes: tuning.batch_bytes,
        file_start: 0,
    };
    for (input, path) in inputs.iter().enumerate() {
        let len = if is_json_lines(path) {
            read_json_lines(input, path, &mut batcher)?
        } else {
            read_text(input, path, tuning.chunk_bytes, &mut batcher)?
        };
        batcher.file_start += len;
    }
    batcher.send()
}

/// One document per non-blank line. Returns the bytes read.
fn read_json_lines(input: usize, path: &Path, batcher: &mut Batcher) -> Result<u64, ReadStop> {
    let file = File::open(path).map_err(io_error(path, "open"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let (mut number, mut position) = (0u64, 0u64);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_error(path, "read"))?;
        if n == 0 {
            return Ok(position);
        }
        number += 1;
        let start = position;
        position += n as u64;
        let text = std::str::from_utf8(&line).map_err(|e| PrepareError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: Some(number),
            offset: start + e.valid_up_to() as u64,
        })?;
        let text = if number == 1 {
            text.strip_prefix('\u{FEFF}').unwrap_or(text)
        } else {
            text
        };
        if text.trim_ascii().is_empty() {
            continue;
        }
        let text = parse_json_document(text).map_err(|e| match e {
            JsonLineError::Invalid(source) => PrepareError::BadJson {
                path: path.to_path_buf(),
                line: number,
                source,
            },
            JsonLineError::NoText(reason) => PrepareError::NoText {
                path: path.to_path_buf(),
                line: number,
                reason,
            },
        })?;
        let item = Item {
            text,
            starts_document: true,
            input,
            line: Some(number),
            offset: start,
        };
        batcher.push(item, position)?;
    }
}

/// The whole file as one document, read in chunks of about `chunk_bytes` cut at split points.
/// Returns the bytes read.
fn read_text(
    input: usize,
    path: &Path,
    chunk_bytes: usize,
    batcher: &mut Batcher,
) -> Result<u64, ReadStop> {
    let mut file = File::open(path).map_err(io_error(path, "open"))?;
    let chunk_bytes = chunk_bytes.max(1);
    // pending[..valid] is UTF-8 and holds no split point at or after chunk_bytes before
    // `searched`; pending starts at byte `offset` of the file.
    let mut pending: Vec<u8> = Vec::new();
    let (mut valid, mut searched, mut offset) = (0usize, 0usize, 0u64);
    let mut starts_document = true;
    loop {
        let n = (&mut file)
            .take(chunk_bytes as u64)
            .read_to_end(&mut pending)
            .map_err(io_error(path, "read"))?;
        let eof = n < chunk_bytes;
        if let Err(e) = std::str::from_utf8(&pending[valid..]) {
            valid += e.valid_up_to();
            // An invalid sequence, or one cut off by the end of the file.
            if e.error_len().is_some() || eof {
                return Err(PrepareError::InvalidUtf8 {
                    path: path.to_path_buf(),
                    line: None,
                    offset: offset + valid as u64,
                }
                .into());
            }
        } else {
            valid = pending.len();
        }
        while valid > chunk_bytes {
            let Some(k) = split_point(&pending[..valid], searched.max(chunk_bytes)) else {
                searched = valid;
                break;
            };
            let rest = pending.split_off(k);
            let chunk = std::mem::replace(&mut pending, rest);
            let item = Item {
                text: String::from_utf8(chunk).expect("validated above"),
                starts_document,
                input,
                line: None,
                offset,
            };
            (valid, searched, offset) = (valid - k, 0, offset + k as u64);
            starts_document = false;
            batcher.push(item, offset)?;
        }
        if eof {
            // Also an empty file: one empty document.
            if !pending.is_empty() || starts_document {
                let len = pending.len() as u64;
                let item = Item {
                    text: String::from_utf8(pending).expect("validated above"),
                    starts_document,
                    input,
                    line: None,
                    offset,
                };
                offset += len;
                batcher.push(item, offset)?;
            }
            return Ok(offset);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Cuts the token stream into val and train shards.
struct ShardWriter<'a> {
    options: &'a PrepareOptions,
    buffer: Vec<u16>,
    /// Tokens already in written shards.
    flushed: u64,
    val_files: Vec<PathBuf>,
    train_files: Vec<PathBuf>,
}

impl ShardWriter<'_> {
    /// The most tokens the shard being filled may hold.
    fn limit(&self) -> usize {
        let val = self.options.val_tokens as u64;
        if self.flushed < val {
            // Lossless: below val_tokens, a usize.
            (val - self.flushed).min(self.options.shard_tokens as u64) as usize
        } else {
            self.options.shard_tokens
        }
    }

    /// Appends tokens, writing a shard once it is full and more tokens come, so a stream that
    /// turns out too short for the val split writes nothing (if the split fits in one shard).
    fn push(&mut self, mut tokens: &[u16]) -> anyhow::Result<()> {
        while !tokens.is_empty() {
            let limit = self.limit();
            if self.buffer.len() == limit {
                self.flush()?;
                continue;
            }
            let take = (limit - self.buffer.len()).min(tokens.len());
            self.buffer.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let options = self.options;
        let is_val = self.flushed < options.val_tokens as u64;
        let (split, number) = if is_val {
            ("val", self.val_files.len())
        } else {
            ("train", self.train_files.len() + 1)
        };
        if number > MAX_SHARDS {
            return Err(PrepareError::TooManyShards {
                shard_tokens: options.shard_tokens,
            }
            .into());
        }
        let path = options
            .out
            .join(format!("{}_{split}_{number:06}.bin", options.prefix));
        write_shard(&path, &self.buffer)?;
        info!("wrote {} ({} tokens)", path.display(), self.buffer.len());
        if is_val {
            self.val_files.push(path);
        } else {
            self.train_files.push(path);
        }
        self.flushed += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Removes the shards written so far (after an error, so no partial dataset is left).
    fn remove_written(&self) {
        for path in self.val_files.iter().chain(&self.train_files) {
            if let Err(e) = std::fs::remove_file(path) {
                warn!("could not remove {}: {e}", path.display());
            }
        }
    }
}

/// Encodes a batch on all cores: the shard tokens of each piece of each item, end-of-text
/// first where an item starts a document, in order.
fn encode_batch(
    items: &[Item],
    piece_bytes: usize,
    inputs: &[PathBuf],
) -> Result<Vec<Vec<u16>>, PrepareError> {
    let work: Vec<(&Item, usize, &str)> = items
        .iter()
        .flat_map(|item| {
            pieces(&item.text, piece_bytes)
                .into_iter()
                .map(move |(start, piece)| (item, start, piece))
        })
        .collect();
    work.par_iter()
        .map(|&(item, start, text)| {
            let mut tokens = Vec::with_capacity(text.len() / 3 + 2);
            if start == 0 && item.starts_document {
                tokens.push(END_OF_TEXT as u16);
            }
            // tiktoken's pre-tokenizer regex gives up on some texts (a run of about a million
            // whitespace characters before more text), and tiktoken-rs then panics, as tiktoken
            // does: report the document instead.
            let ids =
                std::panic::catch_unwind(AssertUnwindSafe(|| encode(text))).map_err(|_| {
                    PrepareError::TokenizerFailed {
                        path: inputs[item.input].clone(),
                        line: item.line,
                        offset: item.line.is_none().then_some(item.offset + start as u64),
                    }
                })?;
            // Lossless: GPT-2 token ids are below 50257.
            tokens.extend(ids.into_iter().map(|t| t as u16));
            Ok(tokens)
        })
        .collect()
}

/// Refuses an output directory that already holds shards with this prefix: the new dataset
/// could have fewer shards and the train glob would mix in the old ones.
fn refuse_stale_shards(options: &PrepareOptions) -> anyhow::Result<()> {
    let dir = &options.out;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, "list")(e).into()),
    };
    let (val, train) = (
        format!("{}_val_", options.prefix),
        format!("{}_train_", options.prefix),
    );
    for entry in entries {
        let entry = entry.map_err(io_error(dir, "list"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with(&val) || name.starts_with(&train)) && name.ends_with(".bin") {
            return Err(PrepareError::StaleShard {
                path: entry.path(),
                prefix: options.prefix.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// Tokenizes `options.inputs` into val and train shards in `options.out` (see the module
/// documentation). On an error, the shards written so far are removed.
pub fn prepare(options: &PrepareOptions) -> anyhow::Result<PrepareSummary> {
    prepare_with(options, TUNING)
}

fn prepare_with(options: &PrepareOptions, tuning: Tuning) -> anyhow::Result<PrepareSummary> {
    options.validate()?;
    let mut input_bytes = 0u64;
    for path in &options.inputs {
        let meta = std::fs::metadata(path).map_err(io_error(path, "read"))?;
        if meta.is_dir() {
            return Err(PrepareError::IsDirectory { path: path.clone() }.into());
        }
        input_bytes += meta.len();
    }
    refuse_stale_shards(options)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let bpe_start = Instant::now();
    super::tokenizer::gpt2_tokenizer()?;
    info!(
        "tokenizing {} input files ({:.1} MB) with the GPT-2 BPE on {} threads (tokenizer loaded in {:.2} s)",
        options.inputs.len(),
        input_bytes as f64 / 1e6,
        rayon::current_num_threads(),
        bpe_start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let mut writer = ShardWriter {
        options,
        buffer: Vec::new(),
        flushed: 0,
        val_files: Vec::new(),
        train_files: Vec::new(),
    };
    let (tx, rx) = sync_channel::<Batch>(1);
    let (encoded, read) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_inputs(&options.inputs, tuning, tx));
        let encoded = encode_stream(rx, &options.inputs, &mut writer, input_bytes, tuning, start);
        let read = match reader.join() {
            Ok(read) => read,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (encoded, read)
    });
    let result = match (read, encoded) {
        (Err(ReadStop::Failed(e)), _) => Err(e.into()),
        (_, Err(e)) => Err(e),
        (Ok(()) | Err(ReadStop::Disconnected), Ok(stats)) => finish(&mut writer, stats),
    };
    match result {
        Ok(summary) => {
            let secs = start.elapsed().as_secs_f64();
            info!(
                "{} documents, {} tokens ({} val in {} shards, {} train in {} shards) in {secs:.1} s ({:.1} MB/s)",
                summary.documents,
                summary.tokens,
                summary.val_tokens,
                summary.val_files.len(),
                summary.train_tokens,
                summary.train_files.len(),
                summary.input_bytes as f64 / 1e6 / secs.max(1e-9)
            );
            Ok(summary)
        }
        Err(e) => {
            writer.remove_written();
            Err(e)
        }
    }
}

#[derive(Default)]
struct StreamStats {
    documents: usize,
    tokens: u64,
    input_bytes: u64,
}

/// Encodes the batches as they arrive and feeds the writer, showing progress over input bytes.
fn encode_stream(
    rx: Receiver<Batch>,
    inputs: &[PathBuf],
    writer: &mut ShardWriter,
    input_bytes: u64,
    tuning: Tuning,
    start: Instant,
) -> anyhow::Result<StreamStats> {
    // A bar on a terminal; without one, the writer's log line per shard is the progress.
    let progress = Progress::new(input_bytes as usize, 0, 0);
    let mut stats = StreamStats::default();
    for batch in rx {
        stats.documents += batch.items.iter().filter(|i| i.starts_document).count();
        stats.input_bytes = batch.input_position;
        for tokens in encode_batch(&batch.items, tuning.piece_bytes, inputs)? {
            stats.tokens += tokens.len() as u64;
            writer.push(&tokens)?;
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        progress.update(
            batch.input_position as usize,
            &format!(
                "bytes read; {} documents, {} tokens, {:.1} MB/s",
                stats.documents,
                stats.tokens,
                batch.input_position as f64 / 1e6 / secs
            ),
        );
    }
    Ok(stats)
}

/// Checks the stream's size and writes the last shard.
fn finish(writer: &mut ShardWriter, stats: StreamStats) -> anyhow::Result<PrepareSummary> {
    let val_tokens = writer.options.val_tokens;
    if stats.documents == 0 {
        return Err(PrepareError::NoDocuments.into());
    }
    if val_tokens > 0 && stats.tokens <= val_tokens as u64 {
        return Err(PrepareError::TooFewTokens {
            tokens: stats.tokens,
            documents: stats.documents,
            val_tokens,
        }
        .into());
    }
    if !writer.buffer.is_empty() {
        writer.flush()?;
    }
    let val = stats.tokens.min(val_tokens as u64);
    Ok(PrepareSummary {
        documents: stats.documents,
        tokens: stats.tokens,
        val_tokens: val,
        train_tokens: stats.tokens - val,
        input_bytes: stats.input_bytes,
        val_files: std::mem::take(&mut writer.val_files),
        train_files: std::mem::take(&mut writer.train_files),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::Shard;
    use crate::data::tokenizer::GPT2_VOCAB;

    /// Tiny chunks, pieces and batches: every code path of the pipeline on small inputs.
    const SMALL: Tuning = Tuning {
        chunk_bytes: 7,
        piece_bytes: 5,
        batch_bytes: 16,
    };

    const EOT: u16 = END_OF_TEXT as u16;

    /// The texts of the tiktoken fixtures (tests/fixtures/tokenizer/cases.jsonl).
    fn fixture_texts() -> Vec<String> {
        let cases = include_str!("../../tests/fixtures/tokenizer/cases.jsonl");
        cases
            .lines()
            .map(|line| {
                let case: serde_json::Value = serde_json::from_str(line).expect("fixture JSON");
                case["text"].as_str().expect("fixture text").to_string()
            })
            .collect()
    }

    fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write input");
        path
    }

    fn options(inputs: Vec<PathBuf>, out: &Path, val_tokens: usize) -> PrepareOptions {
        PrepareOptions {
            val_tokens,
            shard_tokens: 1000,
            ..PrepareOptions::new(inputs, out)
        }
    }

    fn shard_tokens(files: &[PathBuf]) -> Vec<u16> {
        files
            .iter()
            .flat_map(|f| {
                Shard::open(f, GPT2_VOCAB)
                    .expect("open shard")
                    .tokens()
                    .to_vec()
            })
            .collect()
    }

    fn document(text: &str) -> Vec<u16> {
        std::iter::once(EOT)
            .chain(encode(text).into_iter().map(|t| t as u16))
            .collect()
    }

    /// The `PrepareError` inside a failed `prepare`.
    fn prepare_error(result: anyhow::Result<PrepareSummary>) -> PrepareError {
        let err = result.expect_err("prepare must fail");
        match err.downcast::<PrepareError>() {
            Ok(e) => e,
            Err(other) => panic!("not a PrepareError: {other:#}"),
        }
    }

    fn bin_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".bin"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn split_points_are_non_whitespace_followed_by_ascii_whitespace() {
        let at = |text: &str, k| is_split_point(text.as_bytes(), k);
        assert!(at("ab cd", 2));
        assert!(at("a\tb", 1) && at("a\nb", 1) && at("a\r\nb", 1));
        assert!(!at("a  b", 2), "inside a whitespace run");
        assert!(!at("ab cd", 0) && !at("ab cd", 1) && !at("ab cd", 3));
        assert!(!at("ab ", 3), "the end is not a split point");
        assert!(at("é b", 2), "after a two-byte letter");
        assert!(at("日 b", 3), "after a three-byte letter");
        assert!(!at("\u{3000} b", 3), "after a three-byte space");
        assert!(!at("\u{85}\nb", 2), "after NEL, which is whitespace");
        assert!(!at("a\u{a0}b", 1), "before a non-ASCII space");
        assert!(!at("a\x0b b", 2), "after a vertical tab");
        assert!(at("a\x1c b", 2), "U+001C is not Unicode whitespace");
    }

    #[test]
    fn encoding_in_pieces_equals_encoding_whole() {
        let mut texts = fixture_texts();
        texts.push("a \n\n b\t\tc  \r\n d'll 's x\u{3000}\u{3000}y\u{85}\nz  ".repeat(5));
        for text in &texts {
            let whole = encode(text);
            for piece_bytes in [0, 1, 2, 3, 5, 8, 13, 64, 1000] {
                let cut = pieces(text, piece_bytes);
                let rejoined: String = cut.iter().map(|(_, p)| *p).collect();
                assert_eq!(&rejoined, text);
                for (start, piece) in &cut {
                    assert_eq!(&text[*start..*start + piece.len()], *piece);
                }
                let encoded: Vec<u32> = cut.iter().flat_map(|(_, p)| encode(p)).collect();
                assert_eq!(encoded, whole, "piece_bytes {piece_bytes}, text {text:?}");
            }
        }
        let shakespeare = texts.iter().map(String::len).max().unwrap_or(0);
        assert!(shakespeare > 30_000, "the fixtures include a long text");
    }

    #[test]
    fn text_file_streamed_in_small_chunks_gives_the_whole_file_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = fixture_texts().join("\n \n");
        let input = write(dir.path(), "all.txt", &text);
        let want = document(&text);
        for tuning in [
            SMALL,
            Tuning {
                chunk_bytes: 1,
                piece_bytes: 1,
                batch_bytes: 1,
            },
            Tuning {
                chunk_bytes: 4096,
                piece_bytes: 300,
                batch_bytes: 10_000,
            },
            TUNING,
        ] {
            let out = tempfile::tempdir().expect("tempdir");
            let mut opts = options(vec![input.clone()], out.path(), 0);
            opts.shard_tokens = 100_000;
            let summary = prepare_with(&opts, tuning).expect("prepare");
            assert_eq!(summary.documents, 1);
            assert_eq!(summary.input_bytes, text.len() as u64);
            assert!(summary.val_files.is_empty());
            assert_eq!(shard_tokens(&summary.train_files), want, "{tuning:?}");
        }
    }

    #[test]
    fn shards_are_cut_by_count_val_first_then_train_numbered_from_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let docs = [
            "one two three four five six",
            "seven",
            "eight nine ten eleven twelve thirteen fourteen sixteen seventeen eighteen",
            "fifteen",
        ];
        let jsonl: String = docs
            .iter()
            .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
            .collect();
        let input = write(dir.path(), "docs.jsonl", jsonl);
        let want: Vec<u16> = docs.iter().flat_map(|d| document(d)).collect();
        let n = want.len();
        assert!(
            n > 22 && n % 4 != 2,
            "{n} tokens: 3 val shards and 4 train shards, the last partial"
        );

        let out = dir.path().join("out");
        let opts = PrepareOptions {
            prefix: "tiny".into(),
            val_tokens: 10,
            shard_tokens: 4,
            ..PrepareOptions::new(vec![input], &out)
        };
        let summary = prepare_with(&opts, SMALL).expect("prepare");
        assert_eq!(
            bin_files(&out),
            [
                "tiny_train_000001.bin",
                "tiny_train_000002.bin",
                "tiny_train_000003.bin",
                "tiny_train_000004.bin",
                "tiny_val_000000.bin",
                "tiny_val_000001.bin",
                "tiny_val_000002.bin",
            ]
        );
        let lens = |files: &[PathBuf]| -> Vec<usize> {
            files
                .iter()
                .map(|f| Shard::open(f, GPT2_VOCAB).expect("open").len())
                .collect()
        };
        assert_eq!(lens(&summary.val_files), [4, 4, 2]);
        assert_eq!(lens(&summary.train_files), [4, 4, 4, (n - 10) - 12]);
        assert_eq!(shard_tokens(&summary.val_files), want[..10]);
        assert_eq!(shard_tokens(&summary.train_files), want[10..]);
        assert_eq!(
            (
                summary.documents,
                summary.tokens,
                summary.val_tokens,
                summary.train_tokens
            ),
            (4, n as u64, 10, n as u64 - 10)
        );
    }

    #[test]
    fn json_lines_skip_blank_lines_and_accept_crlf_a_bom_and_other_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = write(
            dir.path(),
            "docs.JSON",
            "\u{FEFF}{\"id\": 1, \"text\": \"first\", \"meta\": {\"x\": [1, 2]}}\r\n\r\n   \n\
             {\"text\": \"a <|endoftext|> b\\n\"}\n{\"text\": \"\"}",
        );
        let out = dir.path().join("out");
        let summary = prepare_with(&options(vec![input], &out, 0), SMALL).expect("prepare");
        let want: Vec<u16> = ["first", "a <|endoftext|> b\n", ""]
            .iter()
            .flat_map(|d| document(d))
            .collect();
        assert_eq!(summary.documents, 3);
        let got = shard_tokens(&summary.train_files);
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|&&t| t == EOT).count(), 3);
    }

    #[test]
    fn empty_text_file_is_one_empty_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = write(dir.path(), "empty.txt", "");
        let text = write(dir.path(), "a.txt", "a b");
        let out = dir.path().join("out");
        let summary = prepare_with(&options(vec![empty, text], &out, 0), SMALL).expect("prepare");
        assert_eq!(summary.documents, 2);
        let mut want = vec![EOT];
        want.extend(document("a b"));
        assert_eq!(shard_tokens(&summary.train_files), want);
    }

    #[test]
    fn bad_json_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = write(
            dir.path(),
            "docs.jsonl",
            "{\"text\": \"ok\"}\n\n{\"text\": \"cut off\"\n{\"text\": \"later\"}\n",
        );
        let out = dir.path().join("out");
        let err = prepare_error(prepare_with(&options(vec![input], &out, 0), SMALL));
        assert!(
            matches!(err, PrepareError::BadJson { line: 3, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("docs.jsonl:3: not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn line_without_a_string_text_field_is_an_error_naming_file_and_line() {
        for bad in [
            r#"{"txt": "a"}"#,
            r#"{"text": 5}"#,
            r#"{"text": null}"#,
            r#"["text"]"#,
            r#""text""#,
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let input = write(
                dir.path(),
                "d.jsonl",
                format!("{{\"text\": \"a\"}}\n{bad}\n"),
            );
            let out = dir.path().join("out");
            let err = prepare_error(prepare_with(&options(vec![input], &out, 0), SMALL));
            assert!(
                matches!(err, PrepareError::NoText { line: 2, .. }),
                "{bad}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("d.jsonl:2: not a JSON object with a string \"text\" field"));
        }
    }

    #[test]
    fn invalid_utf8_in_a_text_file_is_an_error_naming_the_byte_offset() {
        let mut bytes = "Hello there, café world. ".repeat(3).into_bytes();
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(b"\xff and more text after it");
        for tuning in [SMALL, TUNING] {
            let dir = tempfile::tempdir().expect("tempdir");
            let input = write(dir.path(), "bad.txt", &bytes);
            let out = dir.path().join("out");
            let err = prepare_error(prepare_with(&options(vec![input], &out, 0), tuning));
            assert!(
                matches!(err, PrepareError::InvalidUtf8 { line: None, offset: o, .. } if o == offset),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("bad.txt: invalid UTF-8 at byte offset {offset}")),
                "{err}"
            );
        }
        // A character cut off by the end of the file.
        let dir = tempfile::tempdir().expect("tempdir");
        let input = write(dir.path(), "cut.txt", b"abc \xe6\x97");
        let out = dir.path().join("out");
        let err = prepare_error(prepare_with(&options(vec![input], &out, 0), SMALL));
        assert!(
            matches!(err, PrepareError::InvalidUtf8 { offset: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn invalid_utf8_in_a_json_line_is_an_error_naming_line_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = "{\"text\": \"fine\"}\n";
        let mut bytes = first.as_bytes().to_vec();
        bytes.extend_from_slice(b"{\"text\": \"bad \xfe\"}\n");
        let input = write(dir.path(), "u.jsonl", &bytes);
        let out = dir.path().join("out");
        let err = prepare_error(prepare_with(&options(vec![input], &out, 0), SMALL));
        let offset = first.len() as u64 + 14;
        assert!(
            matches!(err, PrepareError::InvalidUtf8 { line: Some(2), offset: o, .. } if o == offset),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("u.jsonl:2: invalid UTF-8 at byte offset {offset}"))
        );
    }

    #[test]
    fn no_inputs_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = prepare_error(prepare(&options(vec![], dir.path(), 0)));
        assert!(matches!(err, PrepareError::NoInputs), "{err}");
    }

    #[test]
    fn missing_or_directory_inputs_are_errors_naming_them_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = write(dir.path(), "good.txt", "text");
        let missing = dir.path().join("missing.txt");
        let out = dir.path().join("out");
        let err = prepare_error(prepare(&options(
            vec![good.clone(), missing.clone()],
            &out,
            0,
        )));
        assert!(matches!(err, PrepareError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&missing.display().to_string()));
        assert!(!out.exists());

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let err = prepare_error(prepare(&options(vec![good, sub], &out, 0)));
        assert!(matches!(err, PrepareError::IsDirectory { .. }), "{err}");
    }

    #[test]
    fn inputs_without_documents_are_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = write(dir.path(), "empty.jsonl", "");
        let blank = write(dir.path(), "blank.jsonl", "\n  \n\r\n");
        let out = dir.path().join("out");
        let err = prepare_error(prepare(&options(vec![empty, blank], &out, 0)));
        assert!(matches!(err, PrepareError::NoDocuments), "{err}");
        assert!(bin_files(&out).is_empty());
    }

    #[test]
    fn too_few_tokens_for_the_val_split_is_an_error_with_counts_and_leaves_no_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        // "Hello world" is 2 tokens: 3 with the end-of-text token, 6 for two files.
        let a = write(dir.path(), "a.txt", "Hello world");
        let b = write(dir.path(), "b.txt", "Hello world");
        for (val_tokens, shard_tokens) in [(100, 1000), (6, 1000), (100, 2)] {
            let out = dir.path().join(format!("out{val_tokens}_{shard_tokens}"));
            let opts = PrepareOptions {
                shard_tokens,
                ..options(vec![a.clone(), b.clone()], &out, val_tokens)
            };
            let err = prepare_error(prepare_with(&opts, SMALL));
            assert!(
                matches!(
                    err,
                    PrepareError::TooFewTokens { tokens: 6, documents: 2, val_tokens: v } if v == val_tokens
                ),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains("6 tokens") && msg.contains(&format!("first {val_tokens}")));
            assert!(bin_files(&out).is_empty(), "{:?}", bin_files(&out));
        }
        // One token more than the val split is enough.
        let out = dir.path().join("ok");
        let summary = prepare_with(&options(vec![a, b], &out, 5), SMALL).expect("prepare");
        assert_eq!((summary.val_tokens, summary.train_tokens), (5, 1));
    }

    #[test]
    fn val_tokens_zero_puts_every_token_in_train() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(dir.path(), "a.txt", "Hello world");
        let out = dir.path().join("out");
        let summary = prepare(&options(vec![a], &out, 0)).expect("prepare");
        assert!(summary.val_files.is_empty());
        assert_eq!(bin_files(&out), ["data_train_000001.bin"]);
        assert_eq!(shard_tokens(&summary.train_files), [EOT, 15496, 995]);
    }

    #[test]
    fn an_error_mid_stream_removes_the_shards_already_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut jsonl = String::new();
        for i in 0..50 {
            jsonl.push_str(&format!("{{\"text\": \"document number {i}\"}}\n"));
        }
        jsonl.push_str("not json\n");
        let input = write(dir.path(), "d.jsonl", jsonl);
        let out = dir.path().join("out");
        let opts = PrepareOptions {
            shard_tokens: 3,
            ..options(vec![input], &out, 7)
        };
        let err = prepare_error(prepare_with(&opts, SMALL));
        assert!(
            matches!(err, PrepareError::BadJson { line: 51, .. }),
            "{err}"
        );
        assert!(bin_files(&out).is_empty(), "{:?}", bin_files(&out));
    }

    #[test]
    fn existing_shards_with_the_prefix_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(dir.path(), "a.txt", "Hello world");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let stale = write(&out, "data_train_000009.bin", "old");
        let err = prepare_error(prepare(&options(vec![a.clone()], &out, 0)));
        assert!(matches!(err, PrepareError::StaleShard { .. }), "{err}");
        assert!(err.to_string().contains(&stale.display().to_string()));
        // Another prefix is fine.
        let opts = PrepareOptions {
            prefix: "other".into(),
            ..options(vec![a], &out, 0)
        };
        prepare(&opts).expect("prepare");
        assert_eq!(
            bin_files(&out),
            ["data_train_000009.bin", "other_train_000001.bin"]
        );
    }

    #[test]
    fn bad_options_are_rejected_naming_the_option() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(dir.path(), "a.txt", "Hello world");
        let base = options(vec![a], &dir.path().join("out"), 0);
        let cases = [
            (
                "shard_tokens",
                PrepareOptions {
                    shard_tokens: 0,
                    ..base.clone()
                },
            ),
            (
                "shard_tokens",
                PrepareOptions {
                    shard_tokens: i32::MAX as usize + 1,
                    ..base.clone()
                },
            ),
            (
                "prefix",
                PrepareOptions {
                    prefix: String::new(),
                    ..base.clone()
                },
            ),
            (
                "prefix",
                PrepareOptions {
                    prefix: "a/b".into(),
                    ..base.clone()
                },
            ),
            (
                "val_tokens",
                PrepareOptions {
                    val_tokens: 1_000_000,
                    shard_tokens: 1,
                    ..base.clone()
                },
            ),
        ];
        for (field, opts) in cases {
            let err = prepare_error(prepare(&opts));
            assert!(
                matches!(err, PrepareError::BadOption { field: f, .. } if f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn a_text_the_pre_tokenizer_gives_up_on_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = write(dir.path(), "good.txt", "fine");
        let text = format!("start{}end", " ".repeat(1_100_000));
        let bad = write(dir.path(), "spaces.txt", &text);
        let out = dir.path().join("out");
        let err = prepare_error(prepare(&options(vec![good, bad], &out, 0)));
        assert!(
            matches!(
                err,
                PrepareError::TokenizerFailed {
                    line: None,
                    offset: Some(0),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("spaces.txt (the text from byte offset 0)"),
            "{err}"
        );
        assert!(bin_files(&out).is_empty());
    }

    #[test]
    fn option_defaults_match_the_speedrun() {
        let opts = PrepareOptions::new(vec![PathBuf::from("a.txt")], "out");
        assert_eq!(opts.prefix, "data");
        assert_eq!(opts.val_tokens, 10_485_761);
        assert_eq!(opts.shard_tokens, 100_000_000);
    }
}
