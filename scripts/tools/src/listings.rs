//! Every listing names its file.
//!
//! A listing is a code block that includes a file of a chapter. The reader
//! must be told which file it comes from, so the paragraph right before
//! the block names the file's path in the chapter (`src/network/frame.rs`).
//! Includes of generated diffs need no such sentence: a diff starts with
//! its file's path.

use anyhow::Result;

use crate::includes::{find_links, normalize, pages};
use crate::repo::{self, Repo};
use crate::report::Problem;

/// Checks every include of a chapter file inside a code block.
pub fn check(repo: &Repo) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for page in pages(repo)? {
        let text = repo::read_string(&page)?;
        let dir = page.parent().unwrap_or(&repo.root);
        let lines: Vec<&str> = text.lines().collect();
        let opening = opening_fences(&lines);
        for link in find_links(&text) {
            let target = repo.rel(&normalize(dir, &link.path));
            let Some(file) = chapter_file(&target) else {
                continue;
            };
            let Some(Some(fence)) = opening.get(link.line - 1) else {
                continue; // not inside a code block: not a listing
            };
            if !paragraph_before(&lines, *fence).contains(file) {
                let message = format!(
                    "{}: the paragraph before this listing does not name `{file}`",
                    link.text
                );
                problems.push(Problem::line(repo.rel(&page), link.line, message));
            }
        }
    }
    Ok(problems)
}

/// `chapters/NN-slug/PATH` -> `PATH`; `None` for other files.
fn chapter_file(target: &str) -> Option<&str> {
    let rest = target.strip_prefix("chapters/")?;
    Some(rest.split_once('/')?.1)
}

/// For each line, the index of the opening fence of the code block it is
/// in, or `None` outside code blocks and on the fences themselves.
fn opening_fences(lines: &[&str]) -> Vec<Option<usize>> {
    let mut open = None;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            open = match open {
                None => Some(i),
                Some(_) => None,
            };
            out.push(None);
        } else {
            out.push(open);
        }
    }
    out
}

/// The lines of text right before line `fence`, back to the blank line
/// before them, joined with spaces.
fn paragraph_before(lines: &[&str], fence: usize) -> String {
    let mut end = fence;
    while end > 0 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && !lines[start - 1].trim().is_empty() {
        start -= 1;
    }
    lines[start..end].join(" ")
}
