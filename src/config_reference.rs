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
    /// The values the parser accepts, as the README's table shows them
    /// (`1–1024`, `1ms–1h`...).
    pub range: &'static str,
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
        range: "http:// or https://, with {page}; at most 8 KiB; a port from 1 to 65535",
        value: "\"https://example.com/list?page={page}\"",
    },
    KeyDoc {
        name: "pages",
        group: "The job (required)",
        explanation: "\"1..=295\" (end included), \"1..296\" (end excluded), \"7\", or \"1..\" (open: ends after `stop_after_empty` empty pages).",
        default: "required",
        range: "pages from 1 to 1000000000000000 (10^15); not empty",
        value: "\"1..=10\"",
    },
    KeyDoc {
        name: "pattern",
        group: "The job (required)",
        explanation: "Regular expression: each match is an item, each named group (?P<name>...) a field. Check it with `pagecrawl try`.",
        default: "required",
        range: "a regex with a named group (none called page) that cannot match the empty string",
        value: r#"'<a href="(?P<url>[^"]+)">(?P<title>[^<]*)</a>'"#,
    },
    KeyDoc {
        name: "concurrency",
        group: "Politeness",
        explanation: "Simultaneous requests: a hard cap on what the site sees.",
        default: "8",
        range: "1–1024",
        value: "8",
    },
    KeyDoc {
        name: "rate_limit",
        group: "Politeness",
        explanation: "Requests per second across all threads, retries included; fractions allowed (0.5).",
        default: "none",
        range: "0.0001–10000",
        value: "5",
    },
    KeyDoc {
        name: "user_agent",
        group: "Politeness",
        explanation: "The User-Agent header (default: pagecrawl/VERSION).",
        default: "pagecrawl/VERSION",
        range: "one line of text, at most 1 KiB",
        value: concat!("\"pagecrawl/", env!("CARGO_PKG_VERSION"), "\""),
    },
    KeyDoc {
        name: "headers",
        group: "Politeness",
        explanation: "Extra request headers, e.g. a cookie or a language (default: none).",
        default: "{}",
        range: "at most 64; each one line of text, name and value at most 8 KiB",
        value: "{ Accept-Language = \"en\", Cookie = \"session=abc\" }",
    },
    KeyDoc {
        name: "robots",
        group: "Politeness",
        explanation: "Obey the site's robots.txt: disallowed pages fail, and its Crawl-delay is a minimum interval between requests.",
        default: "true",
        range: "true or false",
        value: "true",
    },
    KeyDoc {
        name: "connect_timeout",
        group: "Fetching",
        explanation: "Time to establish a connection.",
        default: "\"10s\"",
        range: "1ms–1h",
        value: "\"10s\"",
    },
    KeyDoc {
        name: "request_timeout",
        group: "Fetching",
        explanation: "Time for the whole request, body included (it may fire up to 1/8 early, never late).",
        default: "\"30s\"",
        range: "1ms–24h",
        value: "\"30s\"",
    },
    KeyDoc {
        name: "retries",
        group: "Fetching",
        explanation: "Retries after the first attempt (timeouts, connection errors, 5xx, 408, 429).",
        default: "5",
        range: "0–100",
        value: "5",
    },
    KeyDoc {
        name: "backoff",
        group: "Fetching",
        explanation: "First retry delay; doubles per retry, with jitter.",
        default: "\"500ms\"",
        range: "0s–24h",
        value: "\"500ms\"",
    },
    KeyDoc {
        name: "max_backoff",
        group: "Fetching",
        explanation: "Cap on the retry delay (a server's Retry-After is honoured even when longer).",
        default: "\"60s\"",
        range: "0s–24h, not less than backoff",
        value: "\"60s\"",
    },
    KeyDoc {
        name: "charset",
        group: "Fetching",
        explanation: "Used when neither the Content-Type header, a BOM nor <meta> names one (gbk, shift_jis...).",
        default: "\"utf-8\"",
        range: "a WHATWG encoding label",
        value: "\"utf-8\"",
    },
    KeyDoc {
        name: "max_body_size",
        group: "Fetching",
        explanation: "A larger body fails the page.",
        default: "\"10MiB\"",
        range: "1 byte–1GiB",
        value: "\"10MiB\"",
    },
    KeyDoc {
        name: "ca_file",
        group: "Fetching",
        explanation: "A PEM file of CA certificates to trust for HTTPS besides the system's store (which honours SSL_CERT_FILE and SSL_CERT_DIR), e.g. a private CA or a TLS-inspecting proxy's; relative to this file's folder.",
        default: "none",
        range: "a readable PEM file holding at least one certificate",
        value: "\"/etc/pagecrawl/ca.pem\"",
    },
    KeyDoc {
        name: "tls_insecure_skip_verify",
        group: "Fetching",
        explanation: "Accept any HTTPS certificate, checking nothing (insecure: anyone on the path can read and change the pages); logged at warning on every run. Prefer ca_file.",
        default: "false",
        range: "true or false",
        value: "false",
    },
    KeyDoc {
        name: "output",
        group: "Output",
        explanation: "Output path, relative to this file (default: items.jsonl or items.csv in the state directory).",
        default: "items.jsonl in the state dir",
        range: "a file path, not a folder; at most 4096 bytes",
        value: "\"items.jsonl\"",
    },
    KeyDoc {
        name: "format",
        group: "Output",
        explanation: "\"jsonl\" or \"csv\".",
        default: "\"jsonl\"",
        range: "jsonl or csv",
        value: "\"jsonl\"",
    },
    KeyDoc {
        name: "key",
        group: "Output",
        explanation: "A named group that identifies an item: an item whose key was written already is not written again.",
        default: "none",
        range: "a named group of pattern",
        value: "\"url\"",
    },
    KeyDoc {
        name: "absolute",
        group: "Output",
        explanation: "Fields that hold links, resolved to absolute URLs against the page's URL as a browser does (bug.php?id=1 becomes http://host/dir/bug.php?id=1).",
        default: "[]",
        range: "a list of named groups of pattern",
        value: "[\"url\"]",
    },
    KeyDoc {
        name: "stop_after_empty",
        group: "Open ranges and follow mode",
        explanation: "Open ranges: this many consecutive pages without items (or 404/410) end the range.",
        default: "3",
        range: "1–1000",
        value: "3",
    },
    KeyDoc {
        name: "follow",
        group: "Open ranges and follow mode",
        explanation: "Follow mode: when the queue drains, re-crawl the first `refresh_pages` pages this often; needs `key`.",
        default: "none",
        range: "100ms–365d; needs key",
        value: "\"10m\"",
    },
    KeyDoc {
        name: "refresh_pages",
        group: "Open ranges and follow mode",
        explanation: "Follow mode: how many pages from the start of the range each round re-crawls.",
        default: "1",
        range: "1–1000000",
        value: "1",
    },
    KeyDoc {
        name: "parse_threads",
        group: "Tuning",
        explanation: "Threads decoding and extracting (default: the number of CPUs, at most 8).",
        default: "CPUs, at most 8",
        range: "1–256",
        value: "2",
    },
    KeyDoc {
        name: "commit_every",
        group: "Tuning",
        explanation: "Pages per checkpoint (or `commit_interval`, whichever comes first).",
        default: "64",
        range: "1–100000",
        value: "64",
    },
    KeyDoc {
        name: "commit_interval",
        group: "Tuning",
        explanation: "Time per checkpoint (or `commit_every` pages, whichever comes first).",
        default: "\"200ms\"",
        range: "0s–1h",
        value: "\"200ms\"",
    },
    KeyDoc {
        name: "stop_grace",
        group: "Tuning",
        explanation: "On SIGTERM/SIGINT, how long in-flight pages may take to finish.",
        default: "\"10s\"",
        range: "0s–1h",
        value: "\"10s\"",
    },
    KeyDoc {
        name: "metrics_listen",
        group: "Monitoring",
        explanation: "Serve GET /metrics (Prometheus) on this IP address and port while the crawl runs; no authentication, so loopback only unless `metrics_allow_remote`. Not reloadable.",
        default: "none",
        range: "an IP address and port; a loopback address unless `metrics_allow_remote`",
        value: "\"127.0.0.1:9464\"",
    },
    KeyDoc {
        name: "metrics_allow_remote",
        group: "Monitoring",
        explanation: "Allow a `metrics_listen` address other hosts can reach (0.0.0.0, a LAN address): anyone who reaches it reads the crawl's counters.",
        default: "false",
        range: "true or false",
        value: "false",
    },
    KeyDoc {
        name: "detail",
        group: "Detail pages",
        explanation: "Follow each item to the page its `link` field names and merge the named groups of `pattern` (first match) into the item; `collect` lists a field per match, `hosts` other hosts links may name, `on_failure` \"wait\" or \"write\". Also written as a [detail] table at the end of the file. See README.md, \"Detail pages\".",
        default: "none",
        range: "link a field of pattern; pattern and each collect pattern with groups clashing with no item field; at most 64 collect and 256 hosts; on_failure wait or write",
        value: r#"{ link = "url", pattern = '<dd class="vendor">(?P<vendor>[^<]+)</dd>', collect = { tags = '<a class="tag">(?P<tags>[^<]+)</a>' } }"#,
    },
    KeyDoc {
        name: "store",
        group: "Many machines",
        explanation: "A PostgreSQL database that holds the job instead of the state directory: `run` there is one daemon of the job (any number may run at once, on any machines), and `status`, `queue`, `enqueue`, `retry`, `pause`, `resume`, `metrics` and `export` work on it from any machine. The password comes from the URL, PGPASSWORD or ~/.pgpass, and is never shown. Not yet with [detail], an open range or follow mode. See README.md, \"Many machines\".",
        default: "none (the state directory)",
        range: "postgres://USER@HOST[:PORT]/DB, with sslmode and sslrootcert as libpq takes them",
        value: "\"postgres://crawler@db.example/pagecrawl\"",
    },
    KeyDoc {
        name: "lease_time",
        group: "Many machines",
        explanation: "With `store`: how long a daemon's lease on the pages it took lasts without renewal. It renews every third of it while it works; a daemon that dies or freezes loses its pages to the others after this long.",
        default: "\"60s\"",
        range: "2s–1h",
        value: "\"60s\"",
    },
    KeyDoc {
        name: "daemon_concurrency",
        group: "Many machines",
        explanation: "With `store`: the most requests one daemon makes at once, while `concurrency` caps the whole job across its daemons (each daemon holds at most 32 of the job's slots).",
        default: "the job's concurrency",
        range: "1–1024",
        value: "16",
    },
    KeyDoc {
        name: "job",
        group: "Many machines",
        explanation: "The job's name in the `store` database (many jobs may share one).",
        default: "the config file's name without .toml",
        range: "1 to 63 characters, no control characters",
        value: "\"wooyun\"",
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
        let accepted = format!(" Accepted: {}.", key.range);
        for line in wrap(&format!("{}{accepted}{default}", key.explanation), 76) {
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

/// The example job's `detail` value: the mirror's detail pages, with
/// their tags and timeline as lists.
pub fn wooyun_detail() -> String {
    use crate::fixture::wooyun::{DETAIL_PATTERN, TAGS_PATTERN, TIMELINE_PATTERN};
    format!(
        "{{ link = \"url\", pattern = '{DETAIL_PATTERN}', collect = {{ tags = '{TAGS_PATTERN}', timeline = '{TIMELINE_PATTERN}' }}, on_failure = \"write\" }}"
    )
}

/// What `data/wooyun.toml` must hold, byte for byte.
pub fn wooyun_example() -> String {
    let detail = wooyun_detail();
    template(&TemplateJob {
        header: vec![
            "Example job: the WooYun mirror that `pagecrawl demo` serves on 127.0.0.1.".into(),
            "Generated from src/config_reference.rs (a test keeps the two equal; to".into(),
            "regenerate: PAGECRAWL_BLESS=1 cargo test config_reference). Every key but".into(),
            "url, pages, pattern, concurrency and detail is commented out at its default,".into(),
            "or an example where it has none. See README.md, \"Configuration\" and".into(),
            "\"Detail pages\".".into(),
        ],
        values: vec![
            ("url", WOOYUN_URL),
            ("pages", WOOYUN_PAGES),
            ("pattern", WOOYUN_PATTERN),
            ("concurrency", "8"),
            ("detail", &detail),
        ],
    })
}

/// The keys the parser accepts, read from the parser itself: `RawConfig`
/// refuses unknown keys, and its error lists the ones it expects.
pub fn parser_keys() -> Vec<String> {
    crate::config::accepted_keys().to_vec()
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
        // ca_file's example names a file this machine need not have.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, made.cert.pem()).unwrap();
        let example = "\"/etc/pagecrawl/ca.pem\"";
        assert!(everything.contains(example), "{everything}");
        let everything = everything.replace(example, &format!("{:?}", ca.display().to_string()));
        let all = parse(&everything);
        assert_eq!(all.ca_certs, [made.cert.der().to_vec()]);
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
    fn the_documented_ranges_are_the_parsers_limits() {
        let range_of = |name: &str| {
            KEYS.iter()
                .find(|k| k.name == name)
                .unwrap_or_else(|| panic!("{name} is documented"))
                .range
        };
        for (name, min, max) in crate::config::COUNT_RANGES {
            assert!(
                range_of(name).starts_with(&format!("{min}–{max}")),
                "{name}"
            );
        }
        for (name, min, max) in crate::config::DURATION_RANGES {
            assert!(
                range_of(name).starts_with(&format!("{min}–{max}")),
                "{name}"
            );
        }
        let (slowest, fastest) = crate::config::RATE_LIMIT_RANGE;
        assert_eq!(range_of("rate_limit"), format!("{slowest}–{fastest}"));
        assert_eq!(crate::config::MAX_BODY_SIZE, 1 << 30);
        assert_eq!(range_of("max_body_size"), "1 byte–1GiB");
        assert!(range_of("pages").contains(&crate::range::MAX_PAGE.to_string()));
        assert!(range_of("user_agent").contains("1 KiB"));
        assert_eq!(crate::config::MAX_USER_AGENT_BYTES, 1024);
        assert!(range_of("headers").contains(&format!(
            "at most {}; each one line of text, name and value at most {} KiB",
            crate::config::MAX_HEADERS,
            crate::config::MAX_HEADER_BYTES >> 10
        )));
        assert!(range_of("url").contains(&format!("{} KiB", crate::config::MAX_URL_BYTES >> 10)));
        assert!(range_of("output").contains(&crate::config::MAX_OUTPUT_BYTES.to_string()));
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
