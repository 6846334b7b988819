//! Finding a page's character set and decoding it to UTF-8: the
//! `Content-Type` header first, then a byte-order mark or `<meta charset>` /
//! `http-equiv` in the first 1024 bytes, then the configured fallback.

use std::borrow::Cow;
use std::sync::LazyLock;

use encoding_rs::Encoding;
use regex::bytes::Regex;

/// How far into a body `<meta charset>` is looked for (what browsers do).
const SNIFF_BYTES: usize = 1024;

static META_CHARSET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i-u)<meta[^>]+charset\s*=\s*["']?\s*([a-z0-9_:.\-]+)"#).expect("static regex")
});

/// The `charset` parameter of a `Content-Type` value, if it names a known one.
pub fn from_content_type(content_type: &str) -> Option<&'static Encoding> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("charset") {
            return None;
        }
        Encoding::for_label(
            value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .as_bytes(),
        )
    })
}

/// The charset a `<meta>` tag near the top of the body declares.
pub fn from_meta(body: &[u8]) -> Option<&'static Encoding> {
    let head = &body[..body.len().min(SNIFF_BYTES)];
    let label = META_CHARSET.captures(head)?.get(1)?.as_bytes();
    // A page whose <meta> could be read as ASCII is not UTF-16, whatever it
    // claims; browsers treat that label as UTF-8, and so do we.
    Encoding::for_label(label).map(|e| e.output_encoding())
}

/// Picks the encoding for a body, in the order the module doc gives.
pub fn detect(
    content_type: Option<&str>,
    body: &[u8],
    fallback: &'static Encoding,
) -> &'static Encoding {
    content_type
        .and_then(from_content_type)
        .or_else(|| Encoding::for_bom(body).map(|(encoding, _)| encoding))
        .or_else(|| from_meta(body))
        .unwrap_or(fallback)
}

/// Decodes a body; malformed sequences become U+FFFD rather than an error,
/// so one bad byte never loses a page. Returns the encoding used.
pub fn decode<'a>(
    content_type: Option<&str>,
    body: &'a [u8],
    fallback: &'static Encoding,
) -> (Cow<'a, str>, &'static Encoding) {
    let encoding = detect(content_type, body, fallback);
    let (text, used, _) = encoding.decode(body);
    (text, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoding_rs::{GBK, UTF_8, WINDOWS_1252};

    #[test]
    fn header_wins_over_meta() {
        let body = br#"<meta charset="gbk">"#;
        assert_eq!(
            detect(Some("text/html; charset=UTF-8"), body, WINDOWS_1252),
            UTF_8
        );
    }

    #[test]
    fn meta_forms_are_found() {
        assert_eq!(from_meta(br#"<html><META CHARSET='GB2312'>"#), Some(GBK));
        assert_eq!(
            from_meta(br#"<meta http-equiv="Content-Type" content="text/html; charset=gbk" />"#),
            Some(GBK)
        );
        assert_eq!(from_meta(b"<p>charset=gbk</p>"), None);
    }

    #[test]
    fn fallback_when_nothing_is_declared() {
        assert_eq!(detect(Some("text/html"), b"<p>hi</p>", GBK), GBK);
    }

    #[test]
    fn gbk_page_decodes_to_utf8() {
        let (bytes, _, _) = GBK.encode("<meta charset=\"gbk\"><a>某银行存在SQL注入漏洞</a>");
        let (text, used) = decode(None, &bytes, UTF_8);
        assert_eq!(used, GBK);
        assert!(text.contains("某银行存在SQL注入漏洞"));
    }

    #[test]
    fn invalid_bytes_are_replaced_not_fatal() {
        let (text, _) = decode(Some("text/html; charset=utf-8"), b"ok \xff\xfe end", UTF_8);
        assert!(text.starts_with("ok ") && text.ends_with(" end"));
    }
}
