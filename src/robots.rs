//! robots.txt (RFC 9309): which paths this crawler may fetch, and the
//! `Crawl-delay` it should keep between requests. Parsed once at start.
//!
//! The group that names our product token (the user agent up to its first
//! `/`, case-insensitive) applies, else the `*` group. Within a group the
//! longest matching rule wins and `Allow` wins a tie; `*` matches any run of
//! characters and a trailing `$` anchors the end.

use std::time::Duration;

/// One `User-agent` group while parsing: its agents, rules and delay.
#[derive(Default)]
struct Group {
    agents: Vec<String>,
    rules: Vec<(bool, String)>,
    crawl_delay: Option<Duration>,
}

/// The rules for one crawler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Robots {
    /// (allow, pattern)
    rules: Vec<(bool, String)>,
    /// Minimum interval between requests the site asked for.
    pub crawl_delay: Option<Duration>,
}

impl Robots {
    /// Rules that allow everything (no robots.txt, or it could not be read).
    pub fn allow_all() -> Robots {
        Robots::default()
    }

    /// Parses robots.txt text for the crawler whose User-Agent is `agent`.
    pub fn parse(text: &str, agent: &str) -> Robots {
        let token = agent
            .split('/')
            .next()
            .unwrap_or(agent)
            .trim()
            .to_ascii_lowercase();
        let mut groups: Vec<Group> = Vec::new();
        let mut in_agents = false;
        for raw in text.lines() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            match key.as_str() {
                "user-agent" => {
                    if !in_agents {
                        groups.push(Group::default());
                        in_agents = true;
                    }
                    if let Some(group) = groups.last_mut() {
                        group.agents.push(value.to_ascii_lowercase());
                    }
                }
                "allow" | "disallow" => {
                    in_agents = false;
                    if let Some(group) = groups.last_mut() {
                        if !value.is_empty() {
                            group.rules.push((key == "allow", value.to_string()));
                        }
                    }
                }
                "crawl-delay" => {
                    in_agents = false;
                    if let Some(group) = groups.last_mut() {
                        group.crawl_delay = value
                            .parse::<f64>()
                            .ok()
                            .filter(|s| s.is_finite() && *s >= 0.0)
                            .map(|s| Duration::from_secs_f64(s.min(3600.0)));
                    }
                }
                _ => {}
            }
        }
        let names = |group: &&Group, name: &str| group.agents.iter().any(|agent| agent == name);
        let named: Vec<&Group> = groups
            .iter()
            .filter(|g| !token.is_empty() && names(g, &token))
            .collect();
        let chosen = if named.is_empty() {
            groups.iter().filter(|g| names(g, "*")).collect()
        } else {
            named
        };
        let mut robots = Robots::default();
        for group in chosen {
            robots.rules.extend(group.rules.iter().cloned());
            robots.crawl_delay = robots.crawl_delay.max(group.crawl_delay);
        }
        robots
    }

    /// Whether the path (with its query) of a URL may be fetched.
    pub fn allows(&self, path_and_query: &str) -> bool {
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if matches(pattern, path_and_query) {
                let length = pattern.len();
                let better = match best {
                    None => true,
                    Some((best_length, best_allow)) => {
                        length > best_length || (length == best_length && *allow && !best_allow)
                    }
                };
                if better {
                    best = Some((length, *allow));
                }
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }
}

/// Whether a robots.txt pattern matches the start of `path`.
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let parts: Vec<&str> = pattern.split('*').collect();
    let Some(first) = parts.first() else {
        return true;
    };
    if !path.starts_with(first) {
        return false;
    }
    let mut position = first.len();
    let last_index = parts.len() - 1;
    for (index, part) in parts.iter().enumerate().skip(1) {
        if index == last_index && anchored {
            // The last literal must end the path, after `position`.
            return path.len() >= position + part.len() && path.ends_with(part);
        }
        match path[position..].find(part) {
            Some(found) => position += found + part.len(),
            None => return false,
        }
    }
    !anchored || position == path.len()
}

/// The path and query of an absolute URL (`/` when it has none).
pub fn path_and_query(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(at) => after_scheme[at..]
            .split('#')
            .next()
            .unwrap_or("/")
            .to_string(),
        None => "/".to_string(),
    }
}

/// The robots.txt URL of the site an absolute URL is on.
pub fn robots_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}/robots.txt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comments are ignored
User-agent: *
Disallow: /private
Allow: /private/open
Crawl-delay: 2

User-agent: OtherBot
User-agent: pagecrawl
Disallow: /*.php$
Disallow: /wooyun/bugs.php?page=13
Allow: /wooyun/
Crawl-delay: 0.5
";

    #[test]
    fn our_group_wins_over_the_star_group() {
        let robots = Robots::parse(TEXT, "pagecrawl/0.1.0");
        assert!(robots.allows("/wooyun/bugs.php?page=12"));
        assert!(
            !robots.allows("/wooyun/bugs.php?page=13"),
            "longest match wins"
        );
        assert!(!robots.allows("/index.php"), "$ anchors the end");
        assert!(robots.allows("/index.php?x=1"));
        assert!(
            robots.allows("/private"),
            "the * group does not apply to us"
        );
        assert_eq!(robots.crawl_delay, Some(Duration::from_millis(500)));
    }

    #[test]
    fn others_get_the_star_group() {
        let robots = Robots::parse(TEXT, "Mozilla/5.0");
        assert!(!robots.allows("/private/x"));
        assert!(robots.allows("/private/open/x"), "allow wins when longer");
        assert_eq!(robots.crawl_delay, Some(Duration::from_secs(2)));
    }

    #[test]
    fn nothing_or_garbage_allows_everything() {
        assert!(Robots::allow_all().allows("/anything"));
        assert!(Robots::parse("<html>not robots</html>\n\0\u{feff}", "pagecrawl").allows("/x"));
        assert!(
            Robots::parse("User-agent: *\nDisallow:\n", "pagecrawl").allows("/x"),
            "empty Disallow allows"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(path_and_query("http://h:8/a/b?page=3#x"), "/a/b?page=3");
        assert_eq!(path_and_query("https://h"), "/");
        assert_eq!(
            robots_url("http://127.0.0.1:80/x?y").as_deref(),
            Some("http://127.0.0.1:80/robots.txt")
        );
    }

    #[test]
    fn wildcards() {
        assert!(matches("/a*c", "/abc/d"));
        assert!(matches("/a*c$", "/abbc"));
        assert!(!matches("/a*c$", "/abcd"));
        assert!(matches("*", "/anything"));
        assert!(matches("/x$", "/x"));
        assert!(!matches("/x$", "/xy"));
    }
}
