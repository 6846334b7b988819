//! Arbitrary configs for property tests: the three required keys, then a
//! few keys (any the parser accepts, or a misspelt one) set to arbitrary
//! values of every TOML type, with the edge values that broke it before
//! (`rate_limit = 1e-300`, `request_timeout = "18446744073709551615s"`, port
//! 99999, `\r\n` in a header, pages near `u64::MAX`...).

use proptest::prelude::*;
use toml::Value;

fn text() -> impl Strategy<Value = String> {
    let units = prop::sample::select(vec![
        "", "s", "ms", "ns", "h", "d", "y", "MiB", "GiB", "KB", "b", "..", "..=", " ",
    ]);
    prop_oneof![
        "\\PC{0,24}",
        "[\\x00-\\x7f]{0,12}",
        (any::<u64>(), units.clone()).prop_map(|(n, unit)| format!("{n}{unit}")),
        (0u64..100, units).prop_map(|(n, unit)| format!("{n}{unit}")),
        (
            any::<u64>(),
            any::<u64>(),
            prop::sample::select(vec!["..", "..=", "...", " .. "])
        )
            .prop_map(|(a, b, op)| format!("{a}{op}{b}")),
        any::<u32>().prop_map(|port| format!("http://127.0.0.1:{port}/p?page={{page}}")),
        prop::sample::select(vec![
            "postgres://u@127.0.0.1/db",
            "postgres://u:secret@[::1/db?sslmode=x",
            "postgresql://",
            "(?P<a>x*)",
            "(?P<a>x+)",
            "\\b",
            "(?P<page>x)",
            "(?P<a>[",
            "(?P<url>a)",
            "a\r\nb",
            "",
            "/",
            "..",
            "out/",
            "jsonl",
            "csv",
            "gbk",
            "18446744073709551615s",
            "18446744073709551614..",
            "0",
            "0..=0",
            "1..=1000000000000000",
            "http://x:99999/{page}",
            "https://[::1]:8080/{page}",
            "0s",
            "1ms",
            "24h",
        ])
        .prop_map(str::to_string),
        (1usize..3000).prop_map(|n| "a".repeat(n)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        text().prop_map(Value::String),
        any::<i64>().prop_map(Value::Integer),
        (-3i64..2000).prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        prop::sample::select(vec![1e-300, 1e300, 0.0001, 10_000.0, 0.5, -0.0, f64::NAN])
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
    ];
    prop_oneof![
        4 => scalar,
        1 => prop::collection::btree_map(text(), text(), 0..4)
            .prop_map(|map| Value::Table(map.into_iter().map(|(k, v)| (k, Value::String(v))).collect())),
        1 => prop::collection::vec(any::<i64>().prop_map(Value::Integer), 0..3).prop_map(Value::Array),
    ]
}

/// A key set to a value of its own type, near or past the ends of its
/// range, so that many configs parse and reach what uses the values.
fn typed_setting() -> impl Strategy<Value = (String, Value)> {
    let durations: Vec<&str> = super::DURATION_RANGES.iter().map(|(k, _, _)| *k).collect();
    let counts: Vec<&str> = super::COUNT_RANGES.iter().map(|(k, _, _)| *k).collect();
    let unit = prop::sample::select(vec!["ms", "s", "m", "h", "d", "ns", "y"]);
    let page = prop_oneof![
        Just(0u64),
        Just(1u64),
        (1u64..1000),
        Just(crate::range::MAX_PAGE - 1),
        Just(crate::range::MAX_PAGE),
        Just(crate::range::MAX_PAGE + 1),
        Just(u64::MAX - 1),
        any::<u64>(),
    ];
    prop_oneof![
        (
            prop::sample::select(durations.clone()),
            prop_oneof![0u64..200_000, any::<u64>()],
            unit
        )
            .prop_map(|(k, n, u)| (k.to_string(), Value::String(format!("{n}{u}")))),
        (
            prop::sample::select(durations),
            prop::sample::select(vec![
                "18446744073709551615s",
                "9223372036854775807s",
                "100000000000s",
                "0s",
                "1ms",
                "1s",
                "1h",
                "2h",
                "24h",
                "25h",
                "365d",
                "366d",
            ])
        )
            .prop_map(|(k, text)| (k.to_string(), Value::String(text.into()))),
        (
            prop::sample::select(counts),
            prop_oneof![-2i64..300, 900i64..1_100_000]
        )
            .prop_map(|(k, n)| (k.to_string(), Value::Integer(n))),
        (-320.0f64..6.0).prop_map(|e| ("rate_limit".to_string(), Value::Float(10f64.powf(e)))),
        (
            0u64..5000,
            prop::sample::select(vec!["", "KB", "MiB", "GiB"])
        )
            .prop_map(|(n, u)| (
                "max_body_size".to_string(),
                Value::String(format!("{n}{u}"))
            )),
        (
            page.clone(),
            page,
            prop::sample::select(vec!["..", "..=", ""])
        )
            .prop_map(|(a, b, op)| {
                let text = if op.is_empty() {
                    format!("{a}")
                } else {
                    format!("{a}{op}{b}")
                };
                ("pages".to_string(), Value::String(text))
            }),
        (0u64..1000).prop_map(|n| ("pages".to_string(), Value::String(format!("{n}..")))),
        Just(("key".to_string(), Value::String("title".into()))),
        (1usize..2000).prop_map(|n| ("user_agent".to_string(), Value::String("u".repeat(n)))),
        (0u32..70_000).prop_map(|port| (
            "url".to_string(),
            Value::String(format!("http://127.0.0.1:{port}/{{page}}"))
        )),
    ]
}

/// A `[detail]` table: the keys it takes, each with a plausible or an
/// arbitrary value (a link that is not a field, clashing groups, bad
/// regexes, hosts with schemes...).
fn detail_table() -> impl Strategy<Value = (String, Value)> {
    let pattern = prop_oneof![
        Just("(?P<v>b+)".to_string()),
        Just("(?P<url>b+)".to_string()),
        Just("(?P<page>b)".to_string()),
        Just("(?P<detail_error>b)".to_string()),
        text(),
    ];
    (
        prop_oneof![Just("url".to_string()), text()],
        pattern.clone(),
        prop::collection::btree_map(prop_oneof![Just("tags".to_string()), text()], pattern, 0..3),
        prop::collection::vec(prop_oneof![Just("cdn.example".to_string()), text()], 0..3),
        prop_oneof![Just("wait".to_string()), Just("write".to_string()), text()],
        prop::collection::btree_map(text(), value(), 0..2),
    )
        .prop_map(|(link, pattern, collect, hosts, on_failure, extra)| {
            let mut table = toml::Table::new();
            table.insert("link".into(), Value::String(link));
            table.insert("pattern".into(), Value::String(pattern));
            table.insert(
                "collect".into(),
                Value::Table(
                    collect
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                ),
            );
            table.insert(
                "hosts".into(),
                Value::Array(hosts.into_iter().map(Value::String).collect()),
            );
            table.insert("on_failure".into(), Value::String(on_failure));
            for (key, value) in extra {
                table.insert(key, value);
            }
            ("detail".to_string(), Value::Table(table))
        })
}

/// A config text: valid required keys (and `key = "url"`, so that
/// `follow` may be set), then up to five keys set to arbitrary values.
pub(crate) fn config_text() -> impl Strategy<Value = String> {
    let keys = super::accepted_keys().to_vec();
    let setting = prop_oneof![
        4 => (prop::sample::select(keys), value()),
        1 => ("[a-z_-]{1,16}", value()),
        6 => typed_setting(),
        1 => detail_table(),
    ];
    prop::collection::vec(setting, 0..6).prop_map(|settings| {
        let mut table = toml::Table::new();
        table.insert(
            "url".into(),
            Value::String("http://127.0.0.1:1/p?page={page}".into()),
        );
        table.insert("pages".into(), Value::String("1..=3".into()));
        table.insert("pattern".into(), Value::String("(?P<url>a+)".into()));
        table.insert("key".into(), Value::String("url".into()));
        for (key, value) in settings {
            table.insert(key, value);
        }
        toml::to_string(&table).unwrap_or_default()
    })
}
