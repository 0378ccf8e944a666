//! speedrun's GPT-2 tokenizer against OpenAI's tiktoken: every case in
//! tests/fixtures/tokenizer/cases.jsonl (made by scripts/make_tokenizer_fixtures.py with the
//! real tiktoken) must encode to exactly tiktoken's tokens and decode back to its text; and
//! `prepare` must write exactly end-of-text + tokens of each document, cut into val and train.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use speedrun::data::Shard;
use speedrun::data::prepare::{PrepareOptions, prepare};
use speedrun::data::tokenizer::{END_OF_TEXT, GPT2_VOCAB, decode, encode};

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    tokens: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/cases.jsonl");
    let text = std::fs::read_to_string(&path).expect("read the tokenizer fixtures");
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn case<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture case {name}"))
}

fn shard_tokens(files: &[PathBuf]) -> Vec<u32> {
    files
        .iter()
        .flat_map(|f| {
            let shard = Shard::open(f, GPT2_VOCAB).expect("open shard");
            shard
                .tokens()
                .iter()
                .map(|&t| u32::from(t))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn file_names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            f.file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn fixtures_cover_the_kinds_of_text_they_are_meant_to() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} fixture cases", cases.len());
    for name in [
        "hello_world",
        "empty",
        "ascii_prose",
        "contractions",
        "numbers",
        "spaces",
        "trailing_spaces",
        "tabs_and_newlines",
        "unicode_whitespace",
        "accents",
        "cjk",
        "emoji",
        "combining_marks",
        "rtl",
        "code_python",
        "code_rust",
        "endoftext_literal",
        "random_unicode_0",
        "random_latin1_0",
        "random_utf8_bytes_0",
        "tinyshakespeare_head",
    ] {
        case(&cases, name);
    }
    assert_eq!(case(&cases, "hello_world").tokens, [15496, 995]);
    assert!(case(&cases, "tinyshakespeare_head").text.len() > 20_000);
    let total: usize = cases.iter().map(|c| c.tokens.len()).sum();
    assert!(total > 20_000, "{total} fixture tokens");
}

#[test]
fn every_fixture_case_encodes_exactly_as_tiktoken() {
    let mut failures = Vec::new();
    for case in cases() {
        let got = encode(&case.text);
        if got != case.tokens {
            let at = got
                .iter()
                .zip(&case.tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(case.tokens.len()));
            failures.push(format!(
                "{}: {} tokens, tiktoken {}; first difference at token {at}: {:?} vs {:?}",
                case.name,
                got.len(),
                case.tokens.len(),
                got.get(at),
                case.tokens.get(at)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_case_decodes_back_to_its_text() {
    for case in cases() {
        assert_eq!(decode(&case.tokens), case.text, "{}", case.name);
    }
}

#[test]
fn literal_end_of_text_in_a_text_is_ordinary_text() {
    let cases = cases();
    let case = case(&cases, "endoftext_literal");
    assert!(case.text.contains("<|endoftext|>"));
    assert!(!case.tokens.contains(&END_OF_TEXT));
    assert!(!encode(&case.text).contains(&END_OF_TEXT));
}

#[test]
fn prepare_writes_end_of_text_and_each_document_cut_into_val_and_train() {
    let cases = cases();
    let docs = [
        case(&cases, "ascii_prose"),
        case(&cases, "emoji"),
        case(&cases, "endoftext_literal"),
    ];
    let book = case(&cases, "tinyshakespeare_head");
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl: String = docs
        .iter()
        .map(|c| format!("{}\n", serde_json::json!({ "id": c.name, "text": c.text })))
        .collect();
    let jsonl_path = dir.path().join("docs.jsonl");
    std::fs::write(&jsonl_path, jsonl).expect("write jsonl");
    let text_path = dir.path().join("book.txt");
    std::fs::write(&text_path, &book.text).expect("write text");

    // The stream, from tiktoken's own tokens.
    let mut want = Vec::new();
    for c in docs.iter().chain([&book]) {
        want.push(END_OF_TEXT);
        want.extend(&c.tokens);
    }
    assert!(want.len() > 8_000, "{} tokens", want.len());

    let out = dir.path().join("shards");
    let options = PrepareOptions {
        prefix: "fx".into(),
        val_tokens: 4_000,
        shard_tokens: 3_000,
        ..PrepareOptions::new(vec![jsonl_path, text_path], &out)
    };
    let summary = prepare(&options).expect("prepare");

    assert_eq!(summary.documents, 4);
    assert_eq!(summary.tokens, want.len() as u64);
    assert_eq!(
        (summary.val_tokens, summary.train_tokens),
        (4_000, want.len() as u64 - 4_000)
    );
    assert_eq!(
        file_names(&summary.val_files),
        ["fx_val_000000.bin", "fx_val_000001.bin"]
    );
    let train_shards = (want.len() - 4_000).div_ceil(3_000);
    let train_names: Vec<String> = (1..=train_shards)
        .map(|i| format!("fx_train_{i:06}.bin"))
        .collect();
    assert_eq!(file_names(&summary.train_files), train_names);
    assert_eq!(shard_tokens(&summary.val_files), want[..4_000]);
    assert_eq!(shard_tokens(&summary.train_files), want[4_000..]);
    for (i, f) in summary.train_files.iter().enumerate() {
        let len = Shard::open(f, GPT2_VOCAB).expect("open").len();
        let expected = if i + 1 < train_shards {
            3_000
        } else {
            want.len() - 4_000 - 3_000 * i
        };
        assert_eq!(len, expected, "{}", f.display());
    }
}

#[test]
fn prepare_matches_whole_text_encoding_on_a_file_read_in_many_chunks() {
    // About 3 MB, so the file is read and encoded in several chunks and pieces.
    let cases = cases();
    let mut text = String::new();
    let mut round = 0;
    while text.len() < 3_000_000 {
        for c in &cases {
            text.push_str(&c.text);
            text.push_str(["\n", " ", "\n\n", "", "  \t"][round % 5]);
        }
        round += 1;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.txt");
    std::fs::write(&path, &text).expect("write text");
    let out = dir.path().join("shards");
    let options = PrepareOptions {
        val_tokens: 100_000,
        shard_tokens: 1_000_000,
        ..PrepareOptions::new(vec![path], &out)
    };
    let summary = prepare(&options).expect("prepare");

    let mut want = vec![END_OF_TEXT];
    want.extend(encode(&text));
    assert_eq!(summary.documents, 1);
    assert_eq!(summary.input_bytes, text.len() as u64);
    let mut got = shard_tokens(&summary.val_files);
    assert_eq!(got.len(), 100_000);
    got.extend(shard_tokens(&summary.train_files));
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "prepare's tokens differ from encoding the whole text"
    );
}
