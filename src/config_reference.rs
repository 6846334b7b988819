//! The documentation of every configuration key, in one place: the
//! commented config `pagecrawl init` writes and the example in
//! `data/wooyun.toml` are generated from it, and tests hold it, the README's
//! configuration table and the parser (`config.rs`) to the same list of
//! keys and defaults.
//!
//! Adding a key to `RawConfig` without documenting it here fails
//! `config_reference::tests` and the `ux` integration tests.

/// One configuration key as the documentation shows it.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub name: &'static str,
    /// The group it is listed under in the template.
    pub group: &'static str,
    /// One line of explanation.
    pub explanation: &'static str,
    /// The default as the README's table shows it, without its backticks:
    /// `required`, `none`, `8`, `"10s"`...
    pub default: &'static str,
    /// The value the template shows: the default where there is one, else
    /// an example that is valid together with the other values shown.
    pub value: &'static str,
}

impl KeyDoc {
    pub fn required(&self) -> bool {
        self.default == "required"
    }

    /// Whether uncommenting the template's line changes nothing.
    pub fn value_is_default(&self) -> bool {
        self.value == self.default
    }
}

/// Every key the parser accepts, in the order the template lists them.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        name: "url",
        group: "The job (required)",
        explanation: "URL template: {page} is replaced by the page number; http:// or https://.",
        default: "required",
        value: "\"https://example.com/list?page={page}\"",
    },
    KeyDoc {
        name: "pages",
        group: "The job (required)",
        explanation: "\"1..=295\" (end included), \"1..296\" (end excluded), \"7\", or \"1..\" (open: ends after `stop_after_empty` empty pages).",
        default: "required",
        value: "\"1..=10\"",
    },
    KeyDoc {
        name: "pattern",
        group: "The job (required)",
        explanation: "Regular expression: each match is an item, each named group (?P<name>...) a field. Check it with `pagecrawl try`.",
        default: "required",
        value: r#"'<a href="(?P<url>[^"]+)">(?P<title>[^<]*)</a>'"#,
    },
    KeyDoc {
        name: "concurrency",
        group: "Politeness",
        explanation: "Simultaneous requests: a hard cap on what the site sees (1-1024).",
        default: "8",
        value: "8",
    },
    KeyDoc {
        name: "rate_limit",
        group: "Politeness",
        explanation: "Requests per second across all threads, retries included; fractions allowed (0.5).",
        default: "none",
        value: "5",
    },
    KeyDoc {
        name: "user_agent",
        group: "Politeness",
        explanation: "The User-Agent header (default: pagecrawl/VERSION).",
        default: "pagecrawl/VERSION",
        value: concat!("\"pagecrawl/", env!("CARGO_PKG_VERSION"), "\""),
    },
    KeyDoc {
        name: "headers",
        group: "Politeness",
        explanation: "Extra request headers, e.g. a cookie or a language (default: none).",
        default: "{}",
        value: "{ Accept-Language = \"en\", Cookie = \"session=abc\" }",
    },
    KeyDoc {
        name: "robots",
        group: "Politeness",
        explanation: "Obey the site's robots.txt: disallowed pages fail, and its Crawl-delay is a minimum interval between requests.",
        default: "true",
        value: "true",
    },
    KeyDoc {
        name: "connect_timeout",
        group: "Fetching",
        explanation: "Time to establish a connection.",
        default: "\"10s\"",
        value: "\"10s\"",
    },
    KeyDoc {
        name: "request_timeout",
        group: "Fetching",
        explanation: "Time for the whole request, body included (it may fire up to 1/8 early, never late).",
        default: "\"30s\"",
        value: "\"30s\"",
    },
    KeyDoc {
        name: "retries",
        group: "Fetching",
        explanation: "Retries after the first attempt (timeouts, connection errors, 5xx, 408, 429).",
        default: "5",
        value: "5",
    },
    KeyDoc {
        name: "backoff",
        group: "Fetching",
        explanation: "First retry delay; doubles per retry, with jitter.",
        default: "\"500ms\"",
        value: "\"500ms\"",
    },
    KeyDoc {
        name: "max_backoff",
        group: "Fetching",
        explanation: "Cap on the retry delay (a server's Retry-After is honoured even when longer).",
        default: "\"60s\"",
        value: "\"60s\"",
    },
    KeyDoc {
        name: "charset",
        group: "Fetching",
        explanation: "Used when neither the Content-Type header, a BOM nor <meta> names one (gbk, shift_jis...).",
        default: "\"utf-8\"",
        value: "\"utf-8\"",
    },
    KeyDoc {
        name: "max_body_size",
        group: "Fetching",
        explanation: "A larger body fails the page.",
        default: "\"10MiB\"",
        value: "\"10MiB\"",
    },
    KeyDoc {
        name: "output",
        group: "Output",
        explanation: "Output path, relative to this file (default: items.jsonl or items.csv in the state directory).",
        default: "items.jsonl in the state dir",
        value: "\"items.jsonl\"",
    },
    KeyDoc {
        name: "format",
        group: "Output",
        explanation: "\"jsonl\" or \"csv\".",
        default: "\"jsonl\"",
        value: "\"jsonl\"",
    },
    KeyDoc {
        name: "key",
        group: "Output",
        explanation: "A named group that identifies an item: an item whose key was written already is not written again.",
        default: "none",
        value: "\"url\"",
    },
    KeyDoc {
        name: "stop_after_empty",
        group: "Open ranges and follow mode",
        explanation: "Open ranges: this many consecutive pages without items (or 404/410) end the range.",
        default: "3",
        value: "3",
    },
    KeyDoc {
        name: "follow",
        group: "Open ranges and follow mode",
        explanation: "Follow mode: when the queue drains, re-crawl the first `refresh_pages` pages this often; needs `key`.",
        default: "none",
        value: "\"10m\"",
    },
    KeyDoc {
        name: "refresh_pages",
        group: "Open ranges and follow mode",
        explanation: "Follow mode: how many pages from the start of the range each round re-crawls.",
        default: "1",
        value: "1",
    },
    KeyDoc {
        name: "parse_threads",
        group: "Tuning",
        explanation: "Threads decoding and extracting (default: the number of CPUs, at most 8).",
        default: "CPUs, at most 8",
        value: "2",
    },
    KeyDoc {
        name: "commit_every",
        group: "Tuning",
        explanation: "Pages per checkpoint (or `commit_interval`, whichever comes first).",
        default: "64",
        value: "64",
    },
    KeyDoc {
        name: "commit_interval",
        group: "Tuning",
        explanation: "Time per checkpoint (or `commit_every` pages, whichever comes first).",
        default: "\"200ms\"",
        value: "\"200ms\"",
    },
    KeyDoc {
        name: "stop_grace",
        group: "Tuning",
        explanation: "On SIGTERM/SIGINT, how long in-flight pages may take to finish.",
        default: "\"10s\"",
        value: "\"10s\"",
    },
    KeyDoc {
        name: "metrics_listen",
        group: "Monitoring",
        explanation: "Serve GET /metrics (Prometheus) on this IP address and port while the crawl runs; no authentication, so loopback only unless `metrics_allow_remote`. Not reloadable.",
        default: "none",
        value: "\"127.0.0.1:9464\"",
    },
    KeyDoc {
        name: "metrics_allow_remote",
        group: "Monitoring",
        explanation: "Allow a `metrics_listen` address other hosts can reach (0.0.0.0, a LAN address): anyone who reaches it reads the crawl's counters.",
        default: "false",
        value: "false",
    },
];

/// The job-specific part of a generated config.
#[derive(Debug, Clone)]
pub struct TemplateJob<'a> {
    /// Comment lines at the top, without their `# `.
    pub header: Vec<String>,
    /// Values for the required keys (and any other key to set), as TOML
    /// values; keys not named here get the documented line, commented out
    /// unless required.
    pub values: Vec<(&'a str, &'a str)>,
}

/// A config with every key: set keys uncommented, every other key
/// commented out at its default (or an example), each under one line of
/// explanation.
pub fn template(job: &TemplateJob) -> String {
    let mut out = String::new();
    for line in &job.header {
        out.push_str(format!("# {line}").trim_end());
        out.push('\n');
    }
    let mut group = "";
    for key in KEYS {
        if key.group != group {
            group = key.group;
            out.push_str(&format!("\n# --- {group} ---\n"));
        }
        let set = job.values.iter().find(|(name, _)| *name == key.name);
        // "Default: X." is kept on one line: its spaces do not break.
        let default = match key.default {
            "required" => String::new(),
            _ if key.explanation.contains("(default:") => String::new(),
            other => format!(" Default:\u{a0}{}.", other.replace(' ', "\u{a0}")),
        };
        for line in wrap(&format!("{}{default}", key.explanation), 76) {
            out.push_str(&format!("# {}\n", line.replace('\u{a0}', " ")));
        }
        match set {
            Some((_, value)) => out.push_str(&format!("{} = {value}\n", key.name)),
            None if key.required() => out.push_str(&format!("{} = {}\n", key.name, key.value)),
            None => out.push_str(&format!("# {} = {}\n", key.name, key.value)),
        }
    }
    out
}

/// Words into lines of at most `width` characters (a longer word stands
/// alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split([' ', '\n']).filter(|w| !w.is_empty()) {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The config `pagecrawl init NAME` writes.
pub fn init_template(name: &str) -> String {
    template(&TemplateJob {
        header: vec![
            format!("pagecrawl job \"{name}\", written by `pagecrawl init {name}`."),
            "1. Set url, pages and pattern below (they hold placeholders).".into(),
            format!(
                "2. Check the pattern on one page:  pagecrawl try --config {name}.toml --page 1"
            ),
            format!("3. Crawl:                          pagecrawl run --config {name}.toml"),
            format!("   (Ctrl-C stops; the same command resumes; state lives in {name}.state/)"),
            String::new(),
            "Every other key is commented out at its default (or, where it has none, an".into(),
            "example): uncomment a line to change it. Durations: \"500ms\", \"30s\", \"10m\";"
                .into(),
            "sizes: \"10MiB\", \"500KB\". Reference: README.md, \"Configuration\".".into(),
        ],
        values: Vec::new(),
    })
}

/// The values of the example job in `data/wooyun.toml` (the mirror that
/// `pagecrawl demo` serves).
pub const WOOYUN_URL: &str = "\"http://127.0.0.1:8080/wooyun/bugs.php?page={page}\"";
pub const WOOYUN_PAGES: &str = "\"1..=295\"";
pub const WOOYUN_PATTERN: &str = r#"'<td>(?P<date>\d{4}-\d{2}-\d{2})</td>\s*<td><a href="(?P<url>/bugs/wooyun-\d{4}-\d+)"[^>]*>(?P<title>[^<]*)</a></td>\s*<td><a href="/whitehats/[^"]*">(?P<author>[^<]*)</a></td>'"#;

/// What `data/wooyun.toml` must hold, byte for byte.
pub fn wooyun_example() -> String {
    template(&TemplateJob {
        header: vec![
            "Example job: the WooYun mirror that `pagecrawl demo` serves on 127.0.0.1.".into(),
            "Generated from src/config_reference.rs (a test keeps the two equal; to".into(),
            "regenerate: PAGECRAWL_BLESS=1 cargo test config_reference). Every key but".into(),
            "url, pages, pattern and concurrency is commented out at its default, or an".into(),
            "example where it has none. See README.md, \"Configuration\".".into(),
        ],
        values: vec![
            ("url", WOOYUN_URL),
            ("pages", WOOYUN_PAGES),
            ("pattern", WOOYUN_PATTERN),
            ("concurrency", "8"),
        ],
    })
}

/// The keys the parser accepts, read from the parser itself: `RawConfig`
/// refuses unknown keys, and its error lists the ones it expects.
pub fn parser_keys() -> Vec<String> {
    let probe = "pagecrawl_no_such_key = 1\n";
    let error = match crate::config::Config::parse(probe, std::path::Path::new("probe.toml")) {
        Ok(_) => return Vec::new(),
        Err(error) => error.to_string(),
    };
    let Some(list) = error.split("expected one of").nth(1) else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|part| {
            let name = part.trim().trim_matches('`');
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/jobs/job.toml"))
            .unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"))
    }

    /// The template with every commented key line uncommented (those whose
    /// value is the default only, if `defaults_only`).
    fn uncommented(text: &str, defaults_only: bool) -> String {
        text.lines()
            .map(|line| {
                let key = KEYS.iter().find(|k| {
                    line.starts_with(&format!("# {} = ", k.name))
                        && (!defaults_only || k.value_is_default())
                });
                match key {
                    Some(_) => line.trim_start_matches("# ").to_string(),
                    None => line.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_key_the_parser_accepts_is_documented_and_no_other() {
        let accepted: BTreeSet<String> = parser_keys().into_iter().collect();
        assert!(
            accepted.contains("url") && accepted.len() > 10,
            "could not read the parser's key list from its error: {accepted:?}"
        );
        let documented: BTreeSet<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
        assert_eq!(
            documented.len(),
            KEYS.len(),
            "a key is documented twice in KEYS"
        );
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "config keys accepted but not documented in src/config_reference.rs KEYS \
             (and the README's table): {undocumented:?}; documented but refused by the parser: {unknown:?}"
        );
    }

    #[test]
    fn the_init_template_parses_as_written_and_with_every_key_uncommented() {
        let text = init_template("myjob");
        let plain = parse(&text);
        assert_eq!(plain.fields, ["url", "title"]);
        for key in KEYS {
            assert!(
                text.contains(&format!("\n{} = ", key.name))
                    || text.contains(&format!("\n# {} = ", key.name)),
                "{} is in the template",
                key.name
            );
        }
        let everything = uncommented(&text, false);
        assert!(!everything.contains("\n# rate_limit"), "{everything}");
        let all = parse(&everything);
        assert_eq!(all.rate_limit, Some(5.0));
        assert_eq!(all.key.as_deref(), Some("url"));
    }

    #[test]
    fn the_defaults_the_template_shows_are_the_parsers_defaults() {
        let text = init_template("myjob");
        let plain = format!("{:?}", parse(&text));
        let with_defaults = format!("{:?}", parse(&uncommented(&text, true)));
        assert_eq!(plain, with_defaults);
    }

    #[test]
    fn data_wooyun_toml_is_generated_from_this_reference() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/wooyun.toml");
        let expected = wooyun_example();
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        if actual != expected && std::env::var_os("PAGECRAWL_BLESS").is_some() {
            std::fs::write(&path, &expected).expect("data/wooyun.toml rewritten");
            return;
        }
        assert!(
            actual == expected,
            "data/wooyun.toml differs from config_reference::wooyun_example(); \
             regenerate it with PAGECRAWL_BLESS=1 cargo test config_reference"
        );
        parse(&actual);
    }
}
