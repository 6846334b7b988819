//! `pagecrawl completions SHELL` and `pagecrawl man`: the shell completion
//! scripts and the manual page, generated from the same clap definitions as
//! `--help`, so they cannot drift from it.

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, ShellArg};
use crate::config_reference::KEYS;
use crate::exit_code::Exit;

pub fn completions(shell: ShellArg) -> Result<Exit> {
    let shell = match shell {
        ShellArg::Bash => clap_complete::Shell::Bash,
        ShellArg::Zsh => clap_complete::Shell::Zsh,
        ShellArg::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pagecrawl", &mut script);
    super::write_stdout(&script)?;
    Ok(Exit::Success)
}

pub fn man() -> Result<Exit> {
    super::write_stdout(&man_page()?)?;
    Ok(Exit::Success)
}

/// The roff source of `pagecrawl(1)`: the top-level help, then a
/// subsection per command with its usage, description, options and
/// example, then every configuration key (from `config_reference`, as
/// `init` and the README table), all in one page.
pub fn man_page() -> Result<Vec<u8>> {
    let mut command = Cli::command();
    command.build();
    // The NAME line is "pagecrawl \- ABOUT": the help's first line starts
    // with the name already, which the man page must not repeat.
    let about = command.get_about().map(|about| about.to_string());
    let mut named = command.clone();
    if let Some(short) = about.as_deref().and_then(|a| a.strip_prefix("pagecrawl: ")) {
        named = named.about(short.to_string());
    }
    let man = clap_mangen::Man::new(named);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    writeln!(page, ".SH COMMANDS")?;
    for sub in command.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage:").trim();
        writeln!(page, ".SS \"{}\"", roff_text(sub.get_name()))?;
        writeln!(page, ".B {}", roff_text(usage))?;
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|text| text.to_string())
            .unwrap_or_default();
        for paragraph in about.split("\n\n") {
            writeln!(page, ".PP\n{}", roff_text(paragraph))?;
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "verbose" | "quiet") {
                continue;
            }
            let mut names: Vec<String> = Vec::new();
            if let Some(long) = arg.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", roff_text(long)));
            }
            if let Some(short) = arg.get_short() {
                names.push(format!("\\fB\\-{short}\\fR"));
            }
            let value = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| id.to_uppercase(), |name| name.to_string());
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            let label = match (names.is_empty(), takes_value) {
                (true, _) => format!("\\fI{}\\fR", roff_text(&value)),
                (false, true) => format!("{} \\fI{}\\fR", names.join(", "), roff_text(&value)),
                (false, false) => names.join(", "),
            };
            let help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|text| text.to_string())
                .unwrap_or_default();
            writeln!(page, ".TP\n{label}\n{}", roff_text(&help))?;
        }
        if let Some(example) = sub.get_after_help() {
            writeln!(page, ".PP\n.nf\n{}\n.fi", roff_text(&example.to_string()))?;
        }
    }
    write_configuration_section(&mut page)?;
    man.render_extra_section(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// `CONFIGURATION`: every key of the job's TOML file, by group, with its
/// explanation and default, from the list `init` writes its template from.
fn write_configuration_section(page: &mut Vec<u8>) -> Result<()> {
    writeln!(page, ".SH CONFIGURATION")?;
    writeln!(
        page,
        ".PP\nA job is a TOML file (\\fBpagecrawl init\\fR \\fINAME\\fR writes one with every key, \
         commented). Unknown keys are refused. Durations are written \"500ms\", \"30s\", \"10m\"; \
         sizes \"10MiB\", \"500KB\"."
    )?;
    let mut group = "";
    for key in KEYS {
        if key.group != group {
            group = key.group;
            writeln!(page, ".SS \"{}\"", roff_text(group))?;
        }
        // As in the template: a default the explanation states is not
        // repeated.
        let default = match key.default {
            "required" => " (required)".to_string(),
            _ if key.explanation.contains("(default:") => String::new(),
            other => format!(" (default: {other})"),
        };
        writeln!(
            page,
            ".TP\n\\fB{}\\fR{}\n{}",
            roff_text(key.name),
            roff_text(&default),
            roff_text(key.explanation)
        )?;
    }
    Ok(())
}

/// Text made safe for roff: backslashes and hyphens escaped, and no line
/// that starts with a control character.
fn roff_text(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
