//! Every chapter has a page, and the page shows every file the chapter
//! changes.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::diff::{Change, ChapterDiff};
use crate::includes::{find_links, normalize};
use crate::repo::{self, Repo};
use crate::report::Problem;

/// Checks the page `book/src/<chapter dir>.md` of every chapter: the first
/// chapter's page must exist; a later one's must exist, and together with
/// the chapter's other pages (`book/src/NN-*.md`, such as an interlude)
/// include the diff of every changed file (for an added file, the
/// chapter's own file also counts; a removed file only needs its path
/// named, in backquotes).
pub fn check(repo: &Repo, diffs: &[ChapterDiff]) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let chapters = repo.chapters()?;
    if let Some(first) = chapters.first() {
        let page = page_path(&first.name);
        if !repo.root.join(&page).is_file() {
            problems.push(Problem::file(page, "missing page of the first chapter"));
        }
    }
    for cd in diffs {
        let page = page_path(&cd.chapter.name);
        let abs = repo.root.join(&page);
        if !abs.is_file() {
            problems.push(Problem::file(page, "missing page of the chapter"));
            continue;
        }
        let mut shown = BTreeSet::new();
        let mut texts = Vec::new();
        for page in chapter_pages(repo, &cd.chapter.nn())? {
            let text = repo::read_string(&page)?;
            let dir = page.parent().unwrap_or(&repo.root);
            shown.extend(
                find_links(&text)
                    .iter()
                    .map(|link| repo.rel(&normalize(dir, &link.path))),
            );
            texts.push(text);
        }
        for file in &cd.files {
            let diff = cd.diff_path(file);
            let own = format!("chapters/{}/{}", cd.chapter.name, file.path);
            let own_counts = file.change == Change::Added;
            if shown.contains(&diff) || (own_counts && shown.contains(&own)) {
                continue;
            }
            // A removed file needs no listing: naming it says it is gone.
            let named = texts
                .iter()
                .any(|text| text.contains(&format!("`{}`", file.path)));
            if file.change == Change::Removed && named {
                continue;
            }
            let include = diff.trim_start_matches("book/src/");
            let mut message = format!(
                "never shows {} ({}): add {{{{#include {include}}}}}",
                file.path,
                file.change.word()
            );
            if own_counts {
                message.push_str(&format!(" or include ../../{own}"));
            }
            problems.push(Problem::file(&page, message));
        }
    }
    Ok(problems)
}

/// Every page of chapter `nn`: `book/src/NN-*.md`, in name order.
pub fn chapter_pages(repo: &Repo, nn: &str) -> Result<Vec<PathBuf>> {
    let src = repo.root.join("book/src");
    let prefix = format!("{nn}-");
    let mut pages = Vec::new();
    for entry in fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", src.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".md") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// The page of a chapter, relative to the root.
pub fn page_path(chapter_name: &str) -> String {
    format!("book/src/{chapter_name}.md")
}
