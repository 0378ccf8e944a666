#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/: texts and their GPT-2 tokens as OpenAI's tiktoken encodes them.

`tests/tokenizer_fixtures.rs` checks that speedrun's tokenizer (tiktoken-rs, r50k_base) gives
exactly these tokens. The fixtures are committed; rerun this script only to add cases or to
check against a newer tiktoken.

tiktoken downloads its BPE ranks at run time. To work without that (and to pin the ranks), the
script takes them from the `gpt2.tiktoken` asset of the openai-whisper package on PyPI, which it
downloads with pip without installing it (whisper would pull in torch), and checks that the file
is byte for byte tiktoken's r50k_base ranks (GPT-2's; same SHA-256 as tiktoken expects) and that
a few known texts encode as GPT-2 encodes them.

Set-up and run, from the repository root (needs PyPI only):

    python3 -m venv /tmp/tokenizer-venv
    /tmp/tokenizer-venv/bin/pip install tiktoken==0.14.0
    /tmp/tokenizer-venv/bin/python scripts/make_tokenizer_fixtures.py

Options: --ranks PATH uses a gpt2.tiktoken file already on disk instead of downloading
openai-whisper; --shakespeare PATH is the tinyshakespeare text (default
/work/shared/data/tinyshakespeare.txt; its first 32 KiB, cut at a line end, become one case).
The output depends only on the inputs and the tiktoken version: random cases use fixed seeds.
"""

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

TIKTOKEN_VERSION = "0.14.0"
WHISPER_VERSION = "20250625"
WHISPER_ASSET = "whisper/assets/gpt2.tiktoken"
# SHA-256 of r50k_base.tiktoken as tiktoken_ext/openai_public.py expects it: the GPT-2 ranks.
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENDOFTEXT = "<|endoftext|>"
SHAKESPEARE_BYTES = 32 * 1024

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "fixtures" / "tokenizer"


def fail(message):
    print(f"make_tokenizer_fixtures.py: {message}", file=sys.stderr)
    sys.exit(1)


try:
    import tiktoken
    import tiktoken.load
    import tiktoken_ext.openai_public as openai_public
except ImportError:
    fail(
        "tiktoken is not installed; run\n"
        "    python3 -m venv /tmp/tokenizer-venv\n"
        f"    /tmp/tokenizer-venv/bin/pip install tiktoken=={TIKTOKEN_VERSION}\n"
        "    /tmp/tokenizer-venv/bin/python scripts/make_tokenizer_fixtures.py"
    )


def download_whisper_asset(dest_dir):
    """Downloads openai-whisper (no dependencies, not installed) and extracts gpt2.tiktoken."""
    dl = Path(dest_dir) / "download"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dl),
         f"openai-whisper=={WHISPER_VERSION}"],
        check=True,
    )
    archives = sorted(dl.iterdir())
    if len(archives) != 1:
        fail(f"expected one openai-whisper archive, pip downloaded {[a.name for a in archives]}")
    archive = archives[0]
    target = Path(dest_dir) / "gpt2.tiktoken"
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            target.write_bytes(z.read(WHISPER_ASSET))
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.name.endswith("/" + WHISPER_ASSET)]
            if len(members) != 1:
                fail(f"{archive.name}: expected one {WHISPER_ASSET}, found {len(members)}")
            target.write_bytes(t.extractfile(members[0]).read())
    else:
        fail(f"unexpected openai-whisper archive {archive.name}")
    return target, archive.name


def gpt2_encoding(ranks_path):
    data = Path(ranks_path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        fail(f"{ranks_path}: SHA-256 {digest} is not r50k_base's {R50K_SHA256}")
    if R50K_SHA256 not in Path(openai_public.__file__).read_text():
        fail("this tiktoken's openai_public.py no longer names the r50k_base hash; check the ranks")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local file, cache nothing
    ranks = tiktoken.load.load_tiktoken_bpe(str(ranks_path), expected_hash=R50K_SHA256)
    pat_str = getattr(openai_public, "r50k_pat_str", None)
    if pat_str is None:
        fail("tiktoken_ext.openai_public has no r50k_pat_str; use tiktoken==" + TIKTOKEN_VERSION)
    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )
    # Known GPT-2 encodings (tiktoken's own tests and docstrings).
    known = {
        "Hello world": [15496, 995],
        "hello world": [31373, 995],
        "goodbye world": [11274, 16390, 995],
        "<|endoftext|>": [27, 91, 437, 1659, 5239, 91, 29],
    }
    for text, tokens in known.items():
        got = enc.encode_ordinary(text)
        if got != tokens:
            fail(f"{text!r} encodes as {got}, GPT-2 gives {tokens}: not the GPT-2 ranks")
    if enc.encode(ENDOFTEXT, allowed_special="all") != [50256]:
        fail("<|endoftext|> is not the special token 50256")
    return enc, pat_str


PYTHON_CODE = '''\
def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
    print([fib(i) for i in range(10)])  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
'''

RUST_CODE = '''\
fn main() {
\tlet xs: Vec<u32> = (0..10).map(|x| x * x).collect();
\tfor (i, x) in xs.iter().enumerate() {
\t\tprintln!("{i}: {x:>4}");
\t}
\tlet s = String::from("it's \\"quoted\\"\\n");
\tassert_eq!(s.len(), 14);
}
'''

C_CODE = "int main(void){for(int i=0;i<10;++i){printf(\"%d\\n\",i<<2);}return 0;}\r\n"


def fixed_cases():
    return [
        ("hello_world", "Hello world"),
        ("empty", ""),
        ("ascii_prose",
         "The quick brown fox jumps over the lazy dog. It was the best of times, it was the "
         "worst of times; it was the age of wisdom, it was the age of foolishness..."),
        ("contractions",
         "I'm sure you'll see it's what they've said: we'd go, you're right, don't, can't, "
         "won't, she'd've, y'all'd. It'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D"),
        ("contraction_edges",
         "'s 't 're 've 'm 'll 'd 's's''s 'sss 'lll 'vex '' ' rock'n'roll O'Neil ’s ’t"
         " don’t 'S 'Ll 're'm"),
        ("numbers",
         "0 1 12 123 1234 12345 123456789012345678901234567890 3.14159 -42 +7 1,000,000 "
         "1e10 0x1F 2024-05-20 12:34:56 007 $19.99 50% #1"),
        ("unicode_digits", "٠١٢٣٤ ४५६ ½ ¾ ² ³ Ⅻ ① ２０２４ 𝟙𝟚𝟛"),
        ("spaces", "a b  c   d    e     f      g       h"),
        ("trailing_spaces", "trailing spaces   "),
        ("leading_spaces", "   leading spaces"),
        ("single_space", " "),
        ("only_whitespace", "   \n\n\t  \r\n "),
        ("tabs_and_newlines",
         "\ttab\t\tdouble tab\n\nnew paragraph\r\nwindows line\n \n  \t \n end\n"),
        ("newline_runs", "\n\n\n\n\nx\n\n\ny\n"),
        ("space_runs", " " * 37 + "x" + " " * 5 + "\n" + " " * 64),
        ("unicode_whitespace",
         "a\u00a0b\u2003c\u3000d\u2028e\u0085f\u200bg\u2009h\u1680i\u000bj\u000ck\u00a0 \u00a0"),
        ("accents",
         "Café naïve résumé façade coöperate Ærøskøbing Straße ÀÉÎÕÜ Łódź Dvořák İstanbul"),
        ("cjk", "日本語のテキスト、中文文本。한국어 텍스트입니다. 漢字かなカナ"),
        ("emoji", "Emoji: 😀👍🏽 👨\u200d👩\u200d👧\u200d👦 🇺🇸 ❤️ 🫠 ✨✨✨"),
        ("combining_marks",
         "e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z\u0324\u0354\u0367\u0311\u0313"
         "a\u0308\u0356\u032d\u0308\u0307l\u036e\u0312\u036bg\u030c\u0317\u035a\u031a"),
        ("rtl",
         "שלום עולם مرحبا بالعالم \u202eRTL override\u202c \u200fمرحبا\u200e end"),
        ("greek_cyrillic", "Ελληνικά κείμενο. Русский текст, ёжик. Українська: ґ є ї"),
        ("code_python", PYTHON_CODE),
        ("code_rust", RUST_CODE),
        ("code_c", C_CODE),
        ("json_html",
         '{"text": "a \\"b\\"", "n": [1, 2.5e-3, null]} <div class="x">&amp; &lt;p&gt;</div>'),
        ("endoftext_literal",
         "Before<|endoftext|>after <|endoftext|> and <|fim_prefix|><|endoftext|>"),
        ("punctuation",
         "Hello!!! What?! ...---... (parens) [brackets] {braces} <angle> @#$%^&*_+=|\\/~` "
         "«quotes» “curly” ‘single’ — – … •"),
        ("urls_email",
         "https://example.com/path/to?query=1&b=2#frag mailto:user@example.org www.x.io"),
        ("control_chars", "\x00\x01\x07\x1b[31mred\x1b[0m\x7f\x08 bell\x07"),
        ("long_word", "supercalifragilisticexpialidocious" * 20),
        ("long_letter_run", "a" * 500 + " " + "z" * 257),
        ("long_number", "9" * 300 + " " + "1234567890" * 20),
        ("long_punctuation", "!" * 200 + "=-" * 100),
    ]


def random_cases():
    """Random strings from fixed seeds: 'byte-ish' text that exercises the byte fallback."""
    cases = []
    rng = random.Random(20240520)

    alphabet = [chr(c) for c in range(32, 127)] + [" "] * 10 + ["\n", "\t", "\r", "'"]
    for i in range(2):
        cases.append((f"random_ascii_{i}", "".join(rng.choice(alphabet) for _ in range(1500))))

    for i in range(2):
        # Each byte as the Latin-1 character of that value: every code point below 256.
        cases.append((f"random_latin1_{i}", "".join(chr(rng.randrange(256)) for _ in range(800))))

    for i in range(2):
        # Random bytes read as UTF-8 with replacement: U+FFFD among valid pieces.
        raw = bytes(rng.randrange(256) for _ in range(800))
        cases.append((f"random_utf8_bytes_{i}", raw.decode("utf-8", errors="replace")))

    ranges = [
        (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0xFF), (0x100, 0x24F), (0x300, 0x36F),
        (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F), (0x1680, 0x1680),
        (0x2000, 0x206F), (0x2E80, 0x2FDF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
        (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF),
        (0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F),
    ]
    for i in range(3):
        chars = []
        for _ in range(600):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        cases.append((f"random_unicode_{i}", "".join(chars)))

    words = ["the", "The", "THE", "a", "of", "it's", "don't", "we'll", "they've", "I'm",
             "you'd", "'re", "2024", "3.5", "x", "naïve", "日本", "🙂", "<|endoftext|>", "--",
             "hello", "world", "Hello", "World", "speedrun", "GPT-2", "tokens", "ß", "ﬁ"]
    seps = [" ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", "", " \n", "   "]
    for i in range(2):
        parts = []
        for _ in range(400):
            parts.append(rng.choice(words))
            parts.append(rng.choice(seps))
        cases.append((f"random_words_{i}", "".join(parts)))
    return cases


def shakespeare_case(path):
    data = Path(path).read_bytes()[:SHAKESPEARE_BYTES]
    data = data[: data.rfind(b"\n") + 1]  # whole lines
    return ("tinyshakespeare_head", data.decode("utf-8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", help="an existing gpt2.tiktoken (default: from openai-whisper)")
    parser.add_argument("--shakespeare", default="/work/shared/data/tinyshakespeare.txt")
    args = parser.parse_args()

    if tiktoken.__version__ != TIKTOKEN_VERSION:
        print(f"note: tiktoken {tiktoken.__version__}, fixtures were made with "
              f"{TIKTOKEN_VERSION}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        if args.ranks:
            ranks_path, ranks_source = Path(args.ranks), args.ranks
        else:
            ranks_path, archive = download_whisper_asset(tmp)
            ranks_source = f"{WHISPER_ASSET} from PyPI openai-whisper=={WHISPER_VERSION} ({archive})"
        enc, pat_str = gpt2_encoding(ranks_path)

    cases = fixed_cases() + random_cases() + [shakespeare_case(args.shakespeare)]
    names = [name for name, _ in cases]
    assert len(names) == len(set(names)), "case names must be unique"

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    lines = []
    total_tokens = 0
    for name, text in cases:
        tokens = enc.encode_ordinary(text)
        assert enc.decode(tokens) == text, f"{name}: tiktoken does not round-trip"
        total_tokens += len(tokens)
        lines.append(json.dumps({"name": name, "text": text, "tokens": tokens},
                                ensure_ascii=False, separators=(",", ":")))
    cases_path = OUT_DIR / "cases.jsonl"
    cases_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    readme = f"""# Tokenizer fixtures

`cases.jsonl`: one JSON object per line, `{{"name", "text", "tokens"}}`: {len(cases)} texts and
their GPT-2 tokens ({total_tokens} in all) as OpenAI's tiktoken encodes them with
`encode_ordinary` (no special tokens: a literal `<|endoftext|>` in a text is ordinary text).
`tests/tokenizer_fixtures.rs` checks that speedrun's tokenizer gives exactly these tokens and
decodes them back to the texts.

Made by `scripts/make_tokenizer_fixtures.py` (see its header to rerun it) with:

- tiktoken {tiktoken.__version__} (PyPI), Python {sys.version.split()[0]};
- the GPT-2 BPE ranks from {ranks_source}, SHA-256 `{R50K_SHA256}`
  (the hash tiktoken expects for `r50k_base.tiktoken`; also the file tiktoken-rs embeds);
- `tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=<those ranks>,
  special_tokens={{"<|endoftext|>": 50256}})`, with the pattern from `tiktoken_ext/openai_public.py`:
  `{pat_str}`;
- the first {SHAKESPEARE_BYTES} bytes (cut at a line end) of tinyshakespeare (`input.txt` of
  karpathy/char-rnn) for the `tinyshakespeare_head` case, and fixed seeds for the `random_*` cases.
"""
    (OUT_DIR / "README.md").write_text(readme, encoding="utf-8")
    size = cases_path.stat().st_size
    print(f"wrote {cases_path.relative_to(REPO)}: {len(cases)} cases, {total_tokens} tokens, "
          f"{size} bytes")


if __name__ == "__main__":
    main()
