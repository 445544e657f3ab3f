//! How much of what a chapter changes its pages show.
//!
//! A changed line is a line added or changed since the previous chapter,
//! blank lines and anchor markers aside, in any file but a lock file. It
//! is shown if a page of the chapter includes the file's diff, the whole
//! file, or an anchor or line range around it. Files that are deliberately
//! not shown are listed, each with a reason, in `book/not-shown.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use similar::{ChangeTag, TextDiff};

use crate::diff::{Change, ChapterDiff};
use crate::includes::{Part, anchor_name, find_links, normalize};
use crate::pages::chapter_pages;
use crate::repo::{self, Repo};
use crate::report::Problem;

/// The least share of changed lines that every chapter's pages must show.
pub const MIN_SHOWN: f64 = 0.95;

/// Where the files that are deliberately not shown are listed.
pub const NOT_SHOWN: &str = "book/not-shown.toml";

/// The changed lines of one file and which of them the pages show.
#[derive(Debug, Clone)]
pub struct FileCoverage {
    /// The path relative to the chapter directory.
    pub path: String,
    /// The 1-based numbers of its changed lines, in the file as it is.
    pub changed: Vec<usize>,
    /// Those of them that a page shows.
    pub shown: BTreeSet<usize>,
    /// Why it is not shown, if `book/not-shown.toml` lists it.
    pub not_shown: Option<String>,
}

impl FileCoverage {
    /// The changed lines no page shows, as `a-b` ranges.
    pub fn missing_ranges(&self) -> String {
        let missing: Vec<usize> = (self.changed.iter())
            .filter(|n| !self.shown.contains(n))
            .copied()
            .collect();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for n in missing {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == n => *end = n,
                _ => ranges.push((n, n)),
            }
        }
        let text: Vec<String> = (ranges.iter())
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        text.join(", ")
    }
}

/// The coverage of one chapter.
#[derive(Debug, Clone)]
pub struct ChapterCoverage {
    /// The chapter directory name.
    pub chapter: String,
    /// Every changed text file.
    pub files: Vec<FileCoverage>,
}

impl ChapterCoverage {
    /// (lines shown, lines counted): files listed as not shown are left
    /// out of both.
    pub fn counts(&self) -> (usize, usize) {
        let counted = self.files.iter().filter(|f| f.not_shown.is_none());
        counted.fold((0, 0), |(shown, all), f| {
            (shown + f.shown.len(), all + f.changed.len())
        })
    }

    /// The share shown, 1.0 for a chapter that changes nothing counted.
    pub fn share(&self) -> f64 {
        match self.counts() {
            (_, 0) => 1.0,
            (shown, all) => shown as f64 / all as f64,
        }
    }
}

/// Computes the coverage of every chapter after the first.
pub fn compute(repo: &Repo, diffs: &[ChapterDiff]) -> Result<Vec<ChapterCoverage>> {
    let not_shown = read_not_shown(repo)?;
    let chapters = repo.chapters()?;
    let mut out = Vec::new();
    for cd in diffs {
        let Some(prev) = chapters.iter().rev().find(|c| c.number < cd.chapter.number) else {
            continue;
        };
        let mut links = Vec::new();
        for page in chapter_pages(repo, &cd.chapter.nn())? {
            let text = repo::read_string(&page)?;
            let dir = page.parent().unwrap_or(&repo.root).to_path_buf();
            for link in find_links(&text) {
                links.push((repo.rel(&normalize(&dir, &link.path)), link.part));
            }
        }
        let mut files = Vec::new();
        for file in &cd.files {
            if file.binary || file.change == Change::Removed {
                continue;
            }
            let new = repo::read_string(&cd.chapter.dir.join(&file.path))?;
            let old_path = prev.dir.join(&file.path);
            let old = match file.change {
                Change::Modified => repo::read_string(&old_path)?,
                _ => String::new(),
            };
            let changed = changed_lines(&old, &new);
            let own = format!("chapters/{}/{}", cd.chapter.name, file.path);
            let diff = cd.diff_path(file);
            let mut shown = BTreeSet::new();
            for (target, part) in &links {
                if *target == diff {
                    let diff_text = repo::read_string(&repo.root.join(&diff))?;
                    let lines = lines_added_by(&diff_text, part, &new);
                    shown.extend(changed.iter().filter(|n| lines.contains(n)).copied());
                } else if *target == own {
                    let lines = included_lines(&new, part);
                    shown.extend(changed.iter().filter(|n| lines.contains(n)).copied());
                }
            }
            let key = (cd.chapter.name.clone(), file.path.clone());
            files.push(FileCoverage {
                path: file.path.clone(),
                changed,
                shown,
                not_shown: not_shown.get(&key).cloned(),
            });
        }
        out.push(ChapterCoverage {
            chapter: cd.chapter.name.clone(),
            files,
        });
    }
    Ok(out)
}

/// The check: every chapter shows at least [`MIN_SHOWN`] of its changed
/// lines. A chapter below it gets one problem per file with lines missing.
pub fn check(repo: &Repo, diffs: &[ChapterDiff]) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for cc in compute(repo, diffs)? {
        let (shown, all) = cc.counts();
        if cc.share() >= MIN_SHOWN {
            continue;
        }
        let page = crate::pages::page_path(&cc.chapter);
        problems.push(Problem::file(
            &page,
            format!(
                "shows {shown} of {all} changed lines ({:.1}%), less than {:.0}%",
                cc.share() * 100.0,
                MIN_SHOWN * 100.0
            ),
        ));
        for f in cc.files.iter().filter(|f| f.not_shown.is_none()) {
            if f.shown.len() < f.changed.len() {
                let path = format!("chapters/{}/{}", cc.chapter, f.path);
                problems.push(Problem::file(
                    path,
                    format!("lines not shown: {}", f.missing_ranges()),
                ));
            }
        }
    }
    Ok(problems)
}

/// The report of `repo-tools coverage`: one line per chapter, the files
/// not shown with their reasons, and the total.
pub fn report(coverage: &[ChapterCoverage]) -> String {
    let mut out = String::new();
    let (mut shown_all, mut all_all) = (0, 0);
    for cc in coverage {
        let (shown, all) = cc.counts();
        shown_all += shown;
        all_all += all;
        out.push_str(&format!(
            "{:<20} {:>6.1}%  {shown:>5} of {all:>5} changed lines shown\n",
            cc.chapter,
            cc.share() * 100.0
        ));
        for f in &cc.files {
            if let Some(reason) = &f.not_shown {
                out.push_str(&format!("    not shown: {} ({reason})\n", f.path));
            } else if f.shown.len() < f.changed.len() {
                out.push_str(&format!("    {}: lines {}\n", f.path, f.missing_ranges()));
            }
        }
    }
    let total = if all_all == 0 {
        100.0
    } else {
        shown_all as f64 * 100.0 / all_all as f64
    };
    out.push_str(&format!(
        "{:<20} {total:>6.1}%  {shown_all:>5} of {all_all:>5} changed lines shown\n",
        "all chapters"
    ));
    out
}

/// The 1-based numbers of the lines of `new` that a diff from `old` adds,
/// blank lines and anchor markers left out (they are not compared either).
pub fn changed_lines(old: &str, new: &str) -> Vec<usize> {
    let is_marker = |line: &str| line.contains("ANCHOR:") || line.contains("ANCHOR_END:");
    let old: String = old
        .split_inclusive('\n')
        .filter(|l| !is_marker(l))
        .collect();
    let kept: Vec<(usize, &str)> = (new.split_inclusive('\n').enumerate())
        .filter(|(_, l)| !is_marker(l))
        .map(|(i, l)| (i + 1, l))
        .collect();
    let new_text: String = kept.iter().map(|(_, l)| *l).collect();
    let diff = TextDiff::from_lines(&old, &new_text);
    diff.iter_all_changes()
        .filter(|c| c.tag() == ChangeTag::Insert && !c.value().trim().is_empty())
        .filter_map(|c| c.new_index().map(|i| kept[i].0))
        .collect()
}

/// The 1-based line numbers of `new` (the chapter's file) whose added
/// lines the part `part` of its generated diff `diff` shows. The diff
/// leaves out anchor markers, so its line numbers count `new` without
/// them; they are mapped back here.
pub fn lines_added_by(diff: &str, part: &Part, new: &str) -> BTreeSet<usize> {
    let is_marker = |line: &str| line.contains("ANCHOR:") || line.contains("ANCHOR_END:");
    // Line n of `new` without markers is line real[n - 1] of `new`.
    let real: Vec<usize> = (new.lines().enumerate())
        .filter(|(_, l)| !is_marker(l))
        .map(|(i, _)| i + 1)
        .collect();
    let included = included_lines(diff, part);
    let mut shown = BTreeSet::new();
    let mut new_line = 0; // the next line of `new` without markers
    let mut in_hunk = false; // past the file header
    for (i, line) in diff.lines().enumerate() {
        if let Some(hunk) = line.strip_prefix("@@ ") {
            new_line = hunk_start(hunk).unwrap_or(new_line);
            in_hunk = true;
        } else if !in_hunk {
            // the `---` and `+++` lines that name the files
        } else if line.starts_with('+') {
            if included.contains(&(i + 1))
                && let Some(&n) = real.get(new_line.wrapping_sub(1))
            {
                shown.insert(n);
            }
            new_line += 1;
        } else if !line.starts_with('-') && !line.starts_with('\\') {
            new_line += 1; // context
        }
    }
    shown
}

/// The first new line of a hunk header's rest, `-a,b +c,d @@`: `c`.
fn hunk_start(hunk: &str) -> Option<usize> {
    let new = hunk.split_whitespace().find(|part| part.starts_with('+'))?;
    new[1..].split(',').next()?.parse().ok()
}

/// The 1-based line numbers of `text` that an include of `part` takes.
pub fn included_lines(text: &str, part: &Part) -> BTreeSet<usize> {
    let count = text.lines().count();
    match part {
        Part::Whole => (1..=count).collect(),
        Part::Lines { start, end, .. } => {
            let start = start.unwrap_or(1);
            let end = end.unwrap_or(count);
            (start..=end.min(count)).collect()
        }
        Part::Anchor(name) => {
            let mut lines = BTreeSet::new();
            let mut inside = false;
            for (i, line) in text.lines().enumerate() {
                if anchor_name(line, "ANCHOR_END:") == Some(name.as_str()) {
                    inside = false;
                } else if anchor_name(line, "ANCHOR:") == Some(name.as_str()) {
                    inside = true;
                } else if inside {
                    lines.insert(i + 1);
                }
            }
            lines
        }
    }
}

/// `book/not-shown.toml`: (chapter, path) -> reason. A missing file lists
/// nothing.
fn read_not_shown(repo: &Repo) -> Result<BTreeMap<(String, String), String>> {
    let path = repo.root.join(NOT_SHOWN);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    parse_not_shown(&repo::read_string(&path)?, &path)
}

/// Parses the `[[file]]` entries of `book/not-shown.toml`, each with a
/// `chapter`, a `path` and a non-empty `reason`.
fn parse_not_shown(text: &str, path: &Path) -> Result<BTreeMap<(String, String), String>> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut out = BTreeMap::new();
    let entries = match table.get("file") {
        Some(toml::Value::Array(entries)) => entries.as_slice(),
        Some(_) => bail!("{}: `file` must be an array of tables", path.display()),
        None => &[],
    };
    for entry in entries {
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(toml::Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
                .with_context(|| format!("{}: an entry has no `{name}`", path.display()))
        };
        out.insert((field("chapter")?, field("path")?), field("reason")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_of_a_diff_shows_the_lines_it_adds_and_no_others() {
        // The file has an anchor marker, which the diff leaves out.
        let new = "one\n// ANCHOR: x\ntwo\nthree\nfour\n// ANCHOR_END: x\nfive\n";
        let diff = "--- a/f\n+++ b/f\n@@ -1,2 +1,5 @@\n one\n+two\n+three\n-old\n+four\n five\n";
        let whole = lines_added_by(diff, &Part::Whole, new);
        assert_eq!(whole, BTreeSet::from([3, 4, 5]), "two, three, four");
        let range = Part::Lines {
            start: Some(5),
            end: Some(6),
            bad_end: None,
        };
        assert_eq!(lines_added_by(diff, &range, new), BTreeSet::from([3, 4]));
    }
}
