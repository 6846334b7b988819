//! Fuzzes the parse stage: charset detection, decoding, extraction and
//! rendering of an arbitrary body under an arbitrary Content-Type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static EXTRACTOR: LazyLock<pagecrawl::extract::Extractor> = LazyLock::new(|| {
    let pattern = regex::Regex::new(
        r#"<td>(?P<date>\d{4}-\d{2}-\d{2})</td>\s*<td><a href="(?P<url>/bugs/wooyun-\d{4}-\d+)"[^>]*>(?P<title>[^<]*)</a></td>"#,
    )
    .expect("pattern compiles");
    pagecrawl::extract::Extractor::new(pattern)
});

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(0);
    let content_type = std::str::from_utf8(&data[..split]).ok();
    let body = &data[split..];
    let (text, _) = pagecrawl::charset::decode(content_type, body, encoding_rs::UTF_8);
    let items = EXTRACTOR.extract(&text);
    let fields = ["date".to_string(), "url".to_string(), "title".to_string()];
    for format in [
        pagecrawl::output::Format::Jsonl,
        pagecrawl::output::Format::Csv,
    ] {
        let rendered = pagecrawl::output::render(format, 1, &fields, &items);
        assert_eq!(
            rendered.iter().filter(|&&b| b == b'\n').count() >= items.len(),
            true
        );
    }
});
