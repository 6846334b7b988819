//! Property tests: the pure functions that see arbitrary input (ranges,
//! keys, records, charsets, extraction, robots.txt) never panic, and their
//! encodings round-trip.

use proptest::prelude::*;

use pagecrawl::range::{parse_range, PageRange, MAX_PAGE};
use pagecrawl::store::keys::{page_key, page_of, PENDING};
use pagecrawl::store::records::{Counters, Done, Failed, Pending};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn range_parsing_never_panics(text in "\\PC{0,40}") {
        let _ = parse_range(&text);
    }

    #[test]
    fn ranges_round_trip(start in 1u64..=MAX_PAGE, length in 0u64..1_000_000, open in any::<bool>()) {
        let end = (start + length).min(MAX_PAGE);
        let range = if open { PageRange::Open { start } } else { PageRange::Closed { start, end } };
        prop_assert_eq!(parse_range(&range.to_string()), Ok(range));
    }

    /// Any range that parses holds pages from 1 to MAX_PAGE only, and a
    /// refusal is one line.
    #[test]
    fn parsed_ranges_stay_within_the_page_numbers(left in any::<u64>(), right in any::<u64>(), form in 0..4usize) {
        let text = match form {
            0 => format!("{left}"),
            1 => format!("{left}.."),
            2 => format!("{left}..{right}"),
            _ => format!("{left}..={right}"),
        };
        match parse_range(&text) {
            Ok(PageRange::Closed { start, end }) => prop_assert!(1 <= start && start <= end && end <= MAX_PAGE, "{text}"),
            Ok(PageRange::Open { start }) => prop_assert!((1..=MAX_PAGE).contains(&start), "{text}"),
            Err(why) => prop_assert!(!why.contains('\n') && why.contains("write"), "{why}"),
        }
    }

    #[test]
    fn page_keys_round_trip_and_keep_order(a in any::<u64>(), b in any::<u64>()) {
        prop_assert_eq!(page_of(&page_key(PENDING, a)), Some(a));
        prop_assert_eq!(a.cmp(&b), page_key(PENDING, a).cmp(&page_key(PENDING, b)));
    }

    #[test]
    fn records_decode_any_bytes_and_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                               attempts in any::<u32>(), at in any::<u64>(), kind in "\\PC{0,20}", detail in "\\PC{0,40}") {
        let _ = (Pending::decode(&bytes), Done::decode(&bytes), Failed::decode(&bytes), Counters::decode(&bytes));
        let failed = Failed { attempts, at_ms: at, kind, detail };
        prop_assert_eq!(Failed::decode(&failed.encode()), failed);
        let pending = Pending { attempts, not_before_ms: at, last_error: "x".into() };
        prop_assert_eq!(Pending::decode(&pending.encode()), pending);
    }

    #[test]
    fn charset_sniffing_never_panics(content_type in proptest::option::of("\\PC{0,60}"), body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (text, _) = pagecrawl::charset::decode(content_type.as_deref(), &body, encoding_rs::UTF_8);
        prop_assert!(text.len() <= body.len() * 3 + 3);
    }

    #[test]
    fn extraction_never_panics_and_fills_every_field(text in "\\PC{0,400}") {
        let pattern = regex::Regex::new(r#"<a href="(?P<url>[^"]*)">(?P<title>[^<]*)</a>"#).unwrap();
        let items = pagecrawl::extract::Extractor::new(pattern).extract(&text);
        prop_assert!(items.iter().all(|item| item.len() == 2));
    }

    #[test]
    fn extraction_finds_generated_items(titles in proptest::collection::vec("[^<>&\"]{0,20}", 0..10)) {
        let html: String = titles.iter().map(|t| format!("<a href=\"/x\">{t}</a>")).collect();
        let pattern = regex::Regex::new(r#"<a href="(?P<url>[^"]*)">(?P<title>[^<]*)</a>"#).unwrap();
        let items = pagecrawl::extract::Extractor::new(pattern).extract(&html);
        let found: Vec<String> = items.into_iter().map(|i| i[1].clone()).collect();
        let expected: Vec<String> = titles.iter().map(|t| t.trim().to_string()).collect();
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn robots_parsing_and_matching_never_panic(text in "\\PC{0,300}", path in "/\\PC{0,40}") {
        let robots = pagecrawl::robots::Robots::parse(&text, "pagecrawl/0.1");
        let _ = robots.allows(&path);
    }

    #[test]
    fn robots_rules_are_prefix_matches(prefix in "/[a-z]{1,8}", rest in "[a-z/]{0,8}") {
        let robots = pagecrawl::robots::Robots::parse(&format!("User-agent: *\nDisallow: {prefix}\n"), "x");
        let blocked = format!("{prefix}{rest}");
        let elsewhere = format!("/Z{rest}");
        prop_assert!(!robots.allows(&blocked));
        prop_assert!(robots.allows(&elsewhere));
    }
}
