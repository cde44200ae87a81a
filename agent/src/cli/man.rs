//! The man page, generated from the same clap definitions as the parser and the completions.

use std::{io::Write, path::Path};

use clap::CommandFactory;

use super::Cli;

/// Writes `chokepoint(1)` to stdout, or `chokepoint.1` and one `chokepoint-COMMAND.1` per
/// (nested) command into `dir`.
pub fn write(dir: Option<&Path>) -> std::io::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return out.flush();
    };
    std::fs::create_dir_all(dir)?;
    let mut pages = vec![("chokepoint".to_string(), cmd.clone())];
    let mut stack = vec![("chokepoint".to_string(), cmd)];
    while let Some((name, c)) = stack.pop() {
        for sub in c.get_subcommands() {
            let full = format!("{name}-{}", sub.get_name());
            // A short-lived process: the page names live until it exits.
            let leaked: &'static str = Box::leak(full.clone().into_boxed_str());
            pages.push((full.clone(), sub.clone().name(leaked)));
            stack.push((full, sub.clone()));
        }
    }
    for (name, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
    }
    Ok(())
}
