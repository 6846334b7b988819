//! The `[detail]` table: each item is followed to the page its `link` field
//! names, and the named groups of `pattern` there (and the lists of
//! `collect`) are merged into it.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::validate::{check_pattern, shown};

/// The field a failed detail page's reason is written in, with
/// `on_failure = "write"`.
pub const ERROR_FIELD: &str = "detail_error";
/// The most lists one `[detail]` table may collect.
pub const MAX_COLLECT: usize = 64;
/// The most other hosts detail links may point to.
pub const MAX_HOSTS: usize = 256;

/// The `[detail]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetail {
    link: String,
    pattern: String,
    #[serde(default)]
    collect: BTreeMap<String, String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default = "wait")]
    on_failure: String,
}

fn wait() -> String {
    "wait".into()
}

/// What to do with an item whose detail page failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Keep the item until `pagecrawl retry` gets its detail page.
    Wait,
    /// Write it without the detail fields, with the reason in
    /// [`ERROR_FIELD`].
    Write,
}

/// One `collect` entry: a field whose value is a list.
#[derive(Debug, Clone)]
pub struct List {
    pub name: String,
    /// Its pattern, on the crawler's extraction engines.
    pub extractor: crate::extract::Extractor,
    /// The index of the group named `name` among the pattern's named groups.
    pub group: usize,
}

/// A validated `[detail]` table.
#[derive(Debug, Clone)]
pub struct Detail {
    /// The index (in the listing's fields) of the field holding the link.
    pub link: usize,
    pub pattern: Regex,
    /// Named groups of `pattern`, in pattern order.
    pub fields: Vec<String>,
    /// Lists, in name order: each list's values are its pattern's group
    /// named as the list, over every match on the detail page.
    pub collect: Vec<List>,
    /// `pattern` on the crawler's extraction engines (the fast paths
    /// listing patterns get).
    pub extractor: crate::extract::Extractor,
    /// Hosts besides the listing's that detail links may point to
    /// (lowercase).
    pub hosts: Vec<String>,
    pub on_failure: OnFailure,
    /// The table as canonical JSON: part of the job's identity.
    pub identity: String,
}

impl Detail {
    /// The item's columns after the listing's fields: detail fields, lists,
    /// and the failure field when failures are written.
    pub fn extra_columns(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .map(String::as_str)
            .chain(self.collect.iter().map(|list| list.name.as_str()))
            .chain((self.on_failure == OnFailure::Write).then_some(ERROR_FIELD))
    }

    /// Whether a detail link may point at `host` (the listing's own host
    /// is always allowed by the caller).
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

type Refusal = (&'static str, String);

/// The `[detail]` table a job's identity holds (its canonical JSON, see
/// [`Detail::identity`]), validated again against the job's `fields`.
pub fn from_identity(json: &str, fields: &[String]) -> Result<Detail, String> {
    let raw: RawDetail = serde_json::from_str(json)
        .map_err(|e| format!("the job's [detail] table cannot be read ({e})"))?;
    validate(raw, fields).map_err(|(key, why)| format!("the job's {key}: {why}"))
}

/// Validates the table against the listing's `fields`.
pub(super) fn validate(raw: RawDetail, fields: &[String]) -> Result<Detail, Refusal> {
    let identity = serde_json::to_string(&raw).unwrap_or_default();
    let Some(link) = fields.iter().position(|f| *f == raw.link) else {
        return Err((
            "detail.link",
            format!(
                "'{}' is not a named group of the listing pattern (groups: {}); name the field that holds the detail page's link, e.g. link = \"url\"",
                shown(&raw.link),
                fields.join(", ")
            ),
        ));
    };
    let on_failure = match raw.on_failure.as_str() {
        "wait" => OnFailure::Wait,
        "write" => OnFailure::Write,
        other => {
            return Err((
                "detail.on_failure",
                format!(
                    "'{}' is not a failure policy; write \"wait\" (keep the item until `pagecrawl retry` gets its detail page) or \"write\" (write it with the reason in {ERROR_FIELD})",
                    shown(other)
                ),
            ))
        }
    };
    let (pattern, detail_fields) =
        check_pattern(&raw.pattern).map_err(|why| ("detail.pattern", why))?;
    let mut taken: Vec<&str> = fields.iter().map(String::as_str).collect();
    if on_failure == OnFailure::Write {
        taken.push(ERROR_FIELD);
    }
    for name in &detail_fields {
        if taken.contains(&name.as_str()) {
            return Err(("detail.pattern", clash(name)));
        }
    }
    taken.extend(detail_fields.iter().map(String::as_str));
    if raw.collect.len() > MAX_COLLECT {
        return Err((
            "detail.collect",
            format!("{} lists; collect at most {MAX_COLLECT}", raw.collect.len()),
        ));
    }
    let mut collect = Vec::with_capacity(raw.collect.len());
    for (name, text) in &raw.collect {
        if name == "page" || taken.contains(&name.as_str()) {
            return Err(("detail.collect", clash(name)));
        }
        let (regex, groups) = check_pattern(text).map_err(|why| {
            (
                "detail.collect",
                format!("list '{}': the pattern {why}", shown(name)),
            )
        })?;
        if !groups.contains(name) {
            return Err((
                "detail.collect",
                format!(
                    "list '{}': the pattern has no group named after it; write {} = '...(?P<{}>...)...' (every match adds one value)",
                    shown(name),
                    shown(name),
                    shown(name)
                ),
            ));
        }
        collect.push(List {
            name: name.clone(),
            group: groups.iter().position(|g| g == name).unwrap_or(0),
            extractor: crate::extract::Extractor::new(regex),
        });
    }
    if raw.hosts.len() > MAX_HOSTS {
        return Err((
            "detail.hosts",
            format!("{} hosts; list at most {MAX_HOSTS}", raw.hosts.len()),
        ));
    }
    let mut hosts = Vec::with_capacity(raw.hosts.len());
    for host in &raw.hosts {
        let plain = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            && url::Host::parse(host).is_ok();
        if !plain {
            return Err((
                "detail.hosts",
                format!(
                    "'{}' is not a host name; list names such as \"cdn.example.com\" (no scheme, path or port)",
                    shown(host)
                ),
            ));
        }
        hosts.push(host.to_ascii_lowercase());
    }
    Ok(Detail {
        link,
        extractor: crate::extract::Extractor::new(pattern.clone()),
        pattern,
        fields: detail_fields,
        collect,
        hosts,
        on_failure,
        identity,
    })
}

fn clash(name: &str) -> String {
    let what = match name {
        "page" => "holds the page number".to_string(),
        ERROR_FIELD => "holds a failed detail page's reason (on_failure = \"write\")".to_string(),
        _ => "is already a field of the item".to_string(),
    };
    format!(
        "'{}' {what}, and a detail field is merged into the item; rename the group",
        shown(name)
    )
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const LISTING: &str = "url = \"http://127.0.0.1:1/list?page={page}\"\npages = \"1..=3\"\npattern = '<a href=\"(?P<url>[^\"]+)\">(?P<title>[^<]+)</a>'\n";

    fn parse(detail: &str) -> Result<Config, String> {
        Config::parse(&format!("{LISTING}{detail}"), Path::new("/etc/job.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_detail_table_comes_back_from_the_identity_a_store_keeps() {
        let config = parse(
            "[detail]\nlink = \"url\"\npattern = '<b>(?P<vendor>[^<]+)</b>'\ncollect = { tags = '<i>(?P<tags>[^<]+)</i>' }\non_failure = \"write\"\n",
        )
        .unwrap();
        let detail = config.detail.as_ref().unwrap();
        let back = super::from_identity(&detail.identity, &config.fields).unwrap();
        assert_eq!(
            (back.link, &back.fields, back.on_failure, &back.identity),
            (
                detail.link,
                &detail.fields,
                detail.on_failure,
                &detail.identity
            )
        );
        assert_eq!(back.collect[0].name, "tags");
        assert_eq!(
            back.extra_columns().collect::<Vec<_>>(),
            ["vendor", "tags", "detail_error"]
        );
        let err = super::from_identity("{\"link\": 3}", &config.fields).unwrap_err();
        assert!(
            err.starts_with("the job's [detail] table cannot be read"),
            "{err}"
        );
        let other = ["title".to_string()];
        let err = super::from_identity(&detail.identity, &other).unwrap_err();
        assert!(err.starts_with("the job's detail.link: "), "{err}");
    }

    #[test]
    fn a_detail_table_is_checked_against_the_listings_fields() {
        let config = parse(
            "[detail]\nlink = \"url\"\npattern = '<b>(?P<vendor>[^<]+)</b>'\ncollect = { tags = '<i>(?P<tags>[^<]+)</i>' }\nhosts = [\"CDN.example.com\"]\non_failure = \"write\"\n",
        )
        .unwrap();
        let detail = config.detail.as_ref().unwrap();
        assert_eq!(detail.link, 0);
        assert_eq!(detail.fields, ["vendor"]);
        assert!(detail.allows_host("cdn.EXAMPLE.com") && !detail.allows_host("example.com"));
        assert_eq!(config.absolute, [0], "the link is always resolved");
        assert_eq!(
            config.columns(),
            ["url", "title", "vendor", "tags", "detail_error"]
        );
        let inline =
            parse("detail = { link = \"url\", pattern = '<b>(?P<vendor>[^<]+)</b>' }\n").unwrap();
        assert_eq!(inline.columns(), ["url", "title", "vendor"]);
        assert_ne!(inline.detail.unwrap().identity, detail.identity);

        for (table, says) in [
            ("link = \"href\"\npattern = '(?P<v>x)'", "key 'detail.link': 'href' is not a named group of the listing pattern (groups: url, title)"),
            ("link = \"url\"\npattern = '(?P<title>x)'", "key 'detail.pattern': 'title' is already a field of the item"),
            ("link = \"url\"\npattern = 'x'", "key 'detail.pattern': has no named group"),
            ("link = \"url\"\npattern = '(?P<v>x*)'", "key 'detail.pattern': can match the empty string"),
            ("link = \"url\"\npattern = '(?P<v>x)'\ncollect = { v = '(?P<v>y)' }", "key 'detail.collect': 'v' is already a field"),
            ("link = \"url\"\npattern = '(?P<v>x)'\ncollect = { tags = '(?P<tag>y)' }", "list 'tags': the pattern has no group named after it"),
            ("link = \"url\"\npattern = '(?P<v>x)'\ncollect = { tags = '(?P<tags>y' }", "list 'tags': the pattern not a valid regular expression"),
            ("link = \"url\"\npattern = '(?P<detail_error>x)'\non_failure = \"write\"", "holds a failed detail page's reason"),
            ("link = \"url\"\npattern = '(?P<v>x)'\non_failure = \"skip\"", "'skip' is not a failure policy"),
            ("link = \"url\"\npattern = '(?P<v>x)'\nhosts = [\"http://cdn\"]", "'http://cdn' is not a host name"),
            ("link = \"url\"\npattern = '(?P<v>x)'\nretries = 3", "unknown field `retries`"),
        ] {
            let err = parse(&format!("[detail]\n{table}\n")).unwrap_err();
            assert!(err.contains(says), "{err}\n  lacks: {says}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = parse("[detail]\npattern = '(?P<v>x)'\n").unwrap_err();
        assert!(err.contains("link"), "{err}");
    }
}
