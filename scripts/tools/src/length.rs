//! No page shows more code than a reader can follow.
//!
//! A page's *visible* listing lines are the lines of its code blocks that
//! are not inside a `<details>` element (which stays folded until the
//! reader opens it), each `{{#include}}` counted as the lines it takes.
//! A page may show at most [`MAX_VISIBLE`] of them.

use std::path::Path;

use anyhow::Result;

use crate::coverage::included_lines;
use crate::includes::{Link, find_links, normalize, pages};
use crate::repo::{self, Repo};
use crate::report::Problem;

/// The most listing lines a page may show unfolded.
pub const MAX_VISIBLE: usize = 1000;

/// How many listing lines a page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageLength {
    /// Lines of code blocks outside `<details>`.
    pub visible: usize,
    /// Lines of code blocks inside `<details>`.
    pub folded: usize,
    /// The most lines of one visible code block.
    pub longest: usize,
}

/// Measures the page `text`, whose includes are relative to `dir`. An
/// include that does not resolve counts as no line (the includes check
/// reports it).
pub fn measure(text: &str, dir: &Path) -> PageLength {
    let links = find_links(text);
    let mut length = PageLength::default();
    let mut details = 0usize; // how deep inside <details> elements
    let mut block: Option<usize> = None; // lines of the open code block
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            match block.take() {
                None => block = Some(0),
                Some(lines) if details == 0 => {
                    length.visible += lines;
                    length.longest = length.longest.max(lines);
                }
                Some(lines) => length.folded += lines,
            }
            continue;
        }
        match block.as_mut() {
            Some(lines) => *lines += listing_lines(&links, i + 1, dir),
            None => {
                details += line.matches("<details").count();
                details = details.saturating_sub(line.matches("</details>").count());
            }
        }
    }
    length
}

/// How many lines line `number` of a code block shows: itself, or what
/// the includes on it take.
fn listing_lines(links: &[Link], number: usize, dir: &Path) -> usize {
    let mut on_line = links.iter().filter(|link| link.line == number).peekable();
    if on_line.peek().is_none() {
        return 1;
    }
    on_line
        .map(
            |link| match repo::read_string(&normalize(dir, &link.path)) {
                Ok(target) => included_lines(&target, &link.part).len(),
                Err(_) => 0,
            },
        )
        .sum()
}

/// Every page with its length, in path order.
pub fn measure_all(repo: &Repo) -> Result<Vec<(String, PageLength)>> {
    let mut out = Vec::new();
    for page in pages(repo)? {
        let text = repo::read_string(&page)?;
        let dir = page.parent().unwrap_or(&repo.root);
        out.push((repo.rel(&page), measure(&text, dir)));
    }
    Ok(out)
}

/// The check: no page shows more than [`MAX_VISIBLE`] listing lines.
pub fn check(repo: &Repo) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for (page, length) in measure_all(repo)? {
        if length.visible > MAX_VISIBLE {
            let message = format!(
                "shows {} listing lines, more than {MAX_VISIBLE}: fold reference \
                 listings in <details>, or split the page",
                length.visible
            );
            problems.push(Problem::file(page, message));
        }
    }
    Ok(problems)
}

/// The report of `repo-tools length`: a line per page that has listings.
pub fn report(repo: &Repo) -> Result<String> {
    let mut out = format!(
        "{:<36} {:>8} {:>8} {:>8}\n",
        "page", "visible", "folded", "longest"
    );
    for (page, length) in measure_all(repo)? {
        if length.visible + length.folded > 0 {
            out.push_str(&format!(
                "{page:<36} {:>8} {:>8} {:>8}\n",
                length.visible, length.folded, length.longest
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_blocks_and_includes_are_counted_apart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("f.rs"),
            "a\n// ANCHOR: x\nb\nc\n// ANCHOR_END: x\nd\n",
        )
        .unwrap();
        let page = "text\n\n```rust\n{{#include f.rs:x}}\nmore\n```\n\n\
                    <details><summary>all</summary>\n\n```rust\n{{#include f.rs}}\n```\n\n\
                    </details>\n\n```text\none\n```\n";
        let length = measure(page, dir.path());
        assert_eq!(
            length,
            PageLength {
                visible: 4, // b, c, more; one
                folded: 6,
                longest: 3,
            }
        );
    }
}
