//! `pagecrawl init NAME`: write `NAME.toml` in the current directory, a
//! commented config with every key (see `config_reference`), never
//! overwriting an existing file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config_reference::init_template;
use crate::error::UserError;
use crate::exit_code::Exit;

pub fn command(name: &str) -> Result<Exit> {
    let name = job_name(name)?;
    let path = PathBuf::from(format!("{name}.toml"));
    write_new(&path, &init_template(&name))?;
    println!("wrote {}; next:", path.display());
    println!("  1. edit url, pages and pattern in {}", path.display());
    println!(
        "  2. pagecrawl try --config {} --page 1     # check the pattern on one page",
        path.display()
    );
    println!(
        "  3. pagecrawl run --config {}              # crawl; Ctrl-C stops, the same command resumes",
        path.display()
    );
    Ok(Exit::Success)
}

/// The job name: a plain file name, without a `.toml` the user may have
/// typed.
fn job_name(name: &str) -> Result<String, UserError> {
    let name = name.trim();
    let name = name.strip_suffix(".toml").unwrap_or(name);
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(name.to_string())
    } else {
        Err(UserError::Usage(format!(
            "'{}' is not a job name; use letters, digits, '-', '_' or '.' (e.g. `pagecrawl init wooyun`), \
             and run it in the folder the config should go to",
            crate::util::shown(name)
        )))
    }
}

/// Creates `path` with `text`, refusing to replace an existing file.
fn write_new(path: &Path, text: &str) -> Result<()> {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(UserError::Usage(format!(
                "{} already exists; left it as it is (edit it, or pick another name)",
                path.display()
            ))
            .into())
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot create {}: {}",
                path.display(),
                crate::util::io_reason(&e)
            ))
        }
    };
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_plain_file_names() {
        assert_eq!(job_name("wooyun").unwrap(), "wooyun");
        assert_eq!(job_name("my-job_2.toml").unwrap(), "my-job_2");
        assert_eq!(job_name("论坛").unwrap(), "论坛");
        for bad in ["", ".toml", "../etc/passwd", "a/b", ".hidden", "-x", "a b"] {
            let error = job_name(bad).unwrap_err().to_string();
            assert!(error.contains("not a job name"), "{bad}: {error}");
        }
    }
}
