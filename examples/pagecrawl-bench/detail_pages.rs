//! The benchmark site's detail pages (issue 12): one per listed bug, at the
//! bug's own link (`/bugs/wooyun-YYYY-0NNNNNN`), a few KB of HTML holding
//! its vendor, kind, severity, status, a description, a timeline and a few
//! tags; the patterns a two-stage job reads them with; and the check that a
//! two-stage crawl's output holds every item once, merged with the fields
//! its detail page shows.
//!
//! Everything is computed from the bug's position in the listing, so the
//! server, the check and the unit tests agree without sharing state.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::LazyLock;

use pagecrawl::fixture::wooyun::{self, Bug, PER_PAGE};

/// What every detail link starts with.
pub const DETAIL_PREFIX: &str = "/bugs/wooyun-";

/// The serial number of the first listed bug: the generator numbers
/// listing position `q` as serial `q + PER_PAGE`.
const FIRST_SERIAL: u64 = PER_PAGE as u64;

/// The generator's link numbers count down from here (`200000 - serial`).
const LINK_BASE: u64 = 200_000;

/// The most items detail pages can be served for: past it the generator's
/// links repeat.
pub const MAX_ITEMS: u64 = LINK_BASE - 1 - FIRST_SERIAL;

/// The job's `detail` table, as one TOML line (an inline table, so that
/// `--config-line` lines after it stay top-level keys).
pub const DETAIL_LINE: &str = concat!(
    "detail = { link = \"url\", pattern = '",
    r"<dt>厂商</dt><dd>(?P<vendor>[^<]*)</dd>\s*<dt>漏洞类型</dt><dd>(?P<kind>[^<]*)</dd>\s*<dt>危害等级</dt><dd>(?P<severity>[^<]*)</dd>\s*<dt>漏洞状态</dt><dd>(?P<status>[^<]*)</dd>",
    "', collect = { tags = '",
    r#"<a class="tag" href="[^"]*">(?P<tags>[^<]+)</a>"#,
    "' } }"
);

/// The detail pattern alone (the first literal string of [`DETAIL_LINE`]).
pub fn detail_pattern() -> &'static str {
    literal(DETAIL_LINE, 0)
}

/// The tags pattern alone (the second literal string of [`DETAIL_LINE`]).
pub fn tags_pattern() -> &'static str {
    literal(DETAIL_LINE, 1)
}

/// The `n`-th TOML literal string ('...') of `line`.
fn literal(line: &'static str, n: usize) -> &'static str {
    line.split('\'').nth(2 * n + 1).unwrap_or_default()
}

fn lines(text: &'static str) -> Vec<&'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

// The generator's word lists: a bug's vendor and kind are the ones its
// listing title names.
static VENDORS: LazyLock<Vec<&str>> =
    LazyLock::new(|| lines(include_str!("../../data/wooyun-vendors.txt")));
static FLAWS: LazyLock<Vec<&str>> =
    LazyLock::new(|| lines(include_str!("../../data/wooyun-flaws.txt")));

const SEVERITIES: [&str; 3] = ["高", "中", "低"];
const STATUSES: [&str; 4] = [
    "厂商已确认",
    "厂商已修复",
    "未联系到厂商或者厂商积极忽略",
    "已交由第三方处理",
];
/// Tag names as they appear on the page; one holds an entity, which the
/// crawler must unescape.
const TAGS: [&str; 8] = [
    "SQL注入",
    "XSS",
    "信息泄露",
    "弱口令",
    "逻辑漏洞",
    "运维不当",
    "未授权访问",
    "命令执行&amp;代码执行",
];

/// The fields a detail page shows, unescaped, as a crawl must read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailFields {
    pub vendor: String,
    pub kind: String,
    pub severity: String,
    pub status: String,
    pub tags: Vec<String>,
}

/// The fields of the bug at listing position `index` (0-based over the
/// whole listing).
pub fn fields(index: u64) -> DetailFields {
    let serial = index + FIRST_SERIAL;
    let h = wooyun::mix(serial);
    let g = wooyun::mix(serial ^ 0x5EED_DE7A_11ED);
    let first_tag = (g >> 8) as usize % TAGS.len();
    let tag_count = 2 + (g >> 24) as usize % 3;
    DetailFields {
        vendor: VENDORS[(h % VENDORS.len() as u64) as usize].to_string(),
        kind: FLAWS[((h >> 16) % FLAWS.len() as u64) as usize].to_string(),
        severity: SEVERITIES[g as usize % SEVERITIES.len()].to_string(),
        status: STATUSES[(g >> 4) as usize % STATUSES.len()].to_string(),
        tags: (0..tag_count)
            .map(|i| TAGS[(first_tag + i) % TAGS.len()].replace("&amp;", "&"))
            .collect(),
    }
}

/// The listing position of the bug whose link is `path`, if it is one of
/// the first `items` listed.
pub fn index_of(path: &str, items: u64) -> Option<u64> {
    let rest = path.strip_prefix(DETAIL_PREFIX)?;
    let (_, number) = rest.split_once('-')?;
    let serial = LINK_BASE.checked_sub(number.parse().ok()?)?;
    let index = serial.checked_sub(FIRST_SERIAL)?;
    (index < items.min(MAX_ITEMS) && link(index) == path).then_some(index)
}

/// The link of the bug at listing position `index`, as the listing shows
/// it (the generator's formula: a unit test keeps the two equal).
pub fn link(index: u64) -> String {
    let serial = index + FIRST_SERIAL;
    let year = 2016 - (serial / 2000).min(6);
    format!(
        "{DETAIL_PREFIX}{year}-0{:06}",
        LINK_BASE - serial.min(LINK_BASE - 1)
    )
}

/// The bugs of the first `items` listing positions, in listing order.
pub fn listed_bugs(items: u64) -> Vec<Bug> {
    let pages = items.div_ceil(PER_PAGE as u64);
    let mut bugs = wooyun::expected(pages, PER_PAGE);
    bugs.truncate(items as usize);
    bugs
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The detail page of `bug`, listed at `index`: 3 to 4 KB of HTML.
pub fn render(index: u64, bug: &Bug) -> String {
    let fields = fields(index);
    let mut html = String::with_capacity(5_000);
    html.push_str(&format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>{} | WooYun.org</title>\n</head>\n<body>\n",
        escape(&bug.title)
    ));
    html.push_str("<div class=\"nav\"><a href=\"/\">首页</a> <a href=\"/bugs/\">漏洞列表</a> <a href=\"/corps/\">厂商列表</a> <a href=\"/whitehats/\">白帽子</a></div>\n");
    html.push_str(&format!(
        "<div class=\"content\">\n<h3 class=\"wybug_title\">漏洞标题：{}</h3>\n<p>提交时间：{} 作者：<a href=\"/whitehats/{}\">{}</a></p>\n",
        escape(&bug.title),
        bug.date,
        escape(&bug.author),
        escape(&bug.author)
    ));
    html.push_str(&format!(
        "<dl class=\"meta\">\n<dt>厂商</dt><dd>{}</dd>\n<dt>漏洞类型</dt><dd>{}</dd>\n<dt>危害等级</dt><dd>{}</dd>\n<dt>漏洞状态</dt><dd>{}</dd>\n</dl>\n",
        escape(&fields.vendor),
        escape(&fields.kind),
        fields.severity,
        fields.status
    ));
    html.push_str("<h4>漏洞概要</h4>\n<div class=\"detail\">\n");
    for paragraph in 0..8 {
        html.push_str(&format!(
            "<p>{}的{}位于用户登录与数据查询接口（第{}段）。攻击者构造特殊参数即可绕过校验，读取或修改后台数据库中的敏感信息，包括用户名、手机号与订单记录。建议对输入做严格过滤并使用参数化查询。</p>\n",
            escape(&fields.vendor),
            escape(&fields.kind),
            paragraph + 1
        ));
    }
    html.push_str("</div>\n<h4>漏洞时间线</h4>\n<ul class=\"timeline\">\n");
    for (step, what) in [
        "细节向厂商提交",
        "厂商确认漏洞",
        "细节向核心白帽子公开",
        "细节向公众公开",
    ]
    .iter()
    .enumerate()
    {
        html.push_str(&format!("<li>{} +{}天：{what}</li>\n", bug.date, step * 15));
    }
    html.push_str("</ul>\n<p class=\"tags\">标签：");
    for tag in &fields.tags {
        // The tag's place in the list is its link; the page shows it escaped.
        let i = TAGS
            .iter()
            .position(|t| t.replace("&amp;", "&") == *tag)
            .unwrap_or_default();
        html.push_str(&format!(
            "<a class=\"tag\" href=\"/tags/{i}\">{}</a> ",
            TAGS[i]
        ));
    }
    html.push_str("</p>\n</div>\n<div class=\"footer\">Copyright © 2010 - 2016 wooyun.org</div>\n</body>\n</html>\n");
    html
}

/// Checks a two-stage crawl's JSON Lines output against the generator:
/// exactly one item per listed bug, each with its listing fields and the
/// fields of its detail page. Links may be absolute (pagecrawl writes the
/// resolved URL) or as listed. Returns what is wrong, with counts.
pub fn check_output(path: &Path, items: u64) -> Result<(), String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read the output: {e}"))?;
    let bugs = listed_bugs(items);
    let mut seen = HashSet::new();
    let mut lines = 0u64;
    let mut first_problem: Option<String> = None;
    let mut problems = 0u64;
    for line in text.lines() {
        lines += 1;
        let problem = check_line(line, items, &bugs, &mut seen).err();
        if let Some(problem) = problem {
            problems += 1;
            first_problem.get_or_insert(format!("line {lines}: {problem}"));
        }
    }
    if let Some(problem) = first_problem {
        return Err(format!(
            "{problems} of {lines} items wrong (want {items}); first: {problem}"
        ));
    }
    if lines != items {
        return Err(format!("{lines} items in the output, want {items}"));
    }
    Ok(())
}

fn check_line(line: &str, items: u64, bugs: &[Bug], seen: &mut HashSet<u64>) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let text = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("no field {name}"))
    };
    let url = text("url")?;
    // The path of an absolute link: after the `//host`.
    let path = match url.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/').unwrap_or(rest.len())..],
        None => url,
    };
    let index = index_of(path, items).ok_or_else(|| format!("{url} is no listed bug"))?;
    if !seen.insert(index) {
        return Err(format!("{url} written twice"));
    }
    let bug = &bugs[index as usize];
    let want = fields(index);
    let pairs = [
        ("title", bug.title.as_str()),
        ("date", bug.date.as_str()),
        ("author", bug.author.as_str()),
        ("vendor", want.vendor.as_str()),
        ("kind", want.kind.as_str()),
        ("severity", want.severity.as_str()),
        ("status", want.status.as_str()),
    ];
    for (name, expected) in pairs {
        let got = text(name)?;
        if got != expected {
            return Err(format!("{url}: {name} is {got:?}, want {expected:?}"));
        }
    }
    let tags: Option<Vec<&str>> = value
        .get("tags")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str()).collect());
    if tags.as_deref() != Some(&want.tags.iter().map(String::as_str).collect::<Vec<_>>()[..]) {
        return Err(format!("{url}: tags {tags:?}, want {:?}", want.tags));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn detail_links_are_the_listings_links_and_nothing_else() {
        let bugs = listed_bugs(2_000);
        for (index, bug) in bugs.iter().enumerate() {
            assert_eq!(link(index as u64), bug.url, "index {index}");
            assert_eq!(index_of(&bug.url, 2_000), Some(index as u64));
        }
        // Past the listed items, malformed, or with another year: no page.
        assert_eq!(index_of(&bugs[1_999].url, 1_999), None);
        assert_eq!(index_of("/bugs/wooyun-2016-0199980x", 2_000), None);
        assert_eq!(index_of("/bugs/wooyun-2015-0199980", 2_000), None);
        assert_eq!(index_of("/bugs/wooyun-2016-0200001", 2_000), None);
        assert_eq!(index_of("/bugs/other", 2_000), None);
        assert_eq!(index_of(&bugs[0].url, 2_000), Some(0));
    }

    /// The inverse of `escape`, as a crawler's HTML unescaping reads it.
    fn unescape(text: &str) -> String {
        text.replace("&quot;", "\"")
            .replace("&gt;", ">")
            .replace("&lt;", "<")
            .replace("&amp;", "&")
    }

    #[test]
    fn a_detail_page_shows_its_fields_to_the_jobs_patterns() {
        let bugs = listed_bugs(60);
        let pattern = Regex::new(detail_pattern()).unwrap();
        let tags = Regex::new(tags_pattern()).unwrap();
        let mut tag_counts = HashSet::new();
        for (index, bug) in bugs.iter().enumerate() {
            let page = render(index as u64, bug);
            assert!((3_000..6_000).contains(&page.len()), "{}", page.len());
            let want = fields(index as u64);
            let found = pattern.captures(&page).expect("the pattern matches");
            assert_eq!(unescape(&found["vendor"]), want.vendor);
            assert_eq!(unescape(&found["kind"]), want.kind);
            assert_eq!(unescape(&found["severity"]), want.severity);
            assert_eq!(unescape(&found["status"]), want.status);
            let listed: Vec<String> = tags
                .captures_iter(&page)
                .map(|c| unescape(&c["tags"]))
                .collect();
            assert_eq!(listed, want.tags);
            tag_counts.insert(want.tags.len());
            // The vendor and kind are the ones the listing title names.
            assert!(bug.title.starts_with(&want.vendor), "{}", bug.title);
            assert!(bug.title.ends_with(&want.kind), "{}", bug.title);
        }
        assert_eq!(tag_counts.len(), 3, "two to four tags");
    }

    #[test]
    fn the_output_check_finds_missing_repeated_and_wrong_items() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        let line = |index: u64, vendor: Option<&str>| {
            let bug = &listed_bugs(index + 1)[index as usize];
            let want = fields(index);
            serde_json::json!({
                "page": bug.page, "date": bug.date,
                "url": format!("http://127.0.0.1:1{}", bug.url),
                "title": bug.title, "author": bug.author,
                "vendor": vendor.unwrap_or(&want.vendor), "kind": want.kind,
                "severity": want.severity, "status": want.status, "tags": want.tags,
            })
            .to_string()
        };
        let write = |lines: &[String]| fs::write(&path, lines.join("\n") + "\n").unwrap();
        write(&[line(0, None), line(1, None), line(2, None)]);
        assert_eq!(check_output(&path, 3), Ok(()));
        write(&[line(0, None), line(2, None)]);
        assert!(check_output(&path, 3).unwrap_err().contains("2 items"));
        write(&[line(0, None), line(1, None), line(1, None)]);
        assert!(check_output(&path, 3)
            .unwrap_err()
            .contains("written twice"));
        write(&[line(0, None), line(1, Some("x")), line(2, None)]);
        assert!(check_output(&path, 3).unwrap_err().contains("vendor"));
        let no_tags = line(2, None).replace("\"tags\"", "\"tag\"");
        write(&[line(0, None), line(1, None), no_tags]);
        assert!(check_output(&path, 3).unwrap_err().contains("tags"));
    }
}
