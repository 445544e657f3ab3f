//! Runs the checks and reports them.

use std::io::Write;

use anyhow::Result;

use crate::diff::{self, ChapterDiff};
use crate::repo::Repo;
use crate::report::Problem;
use crate::{coverage, includes, length, listings, lockstep, pages};

/// One of the checks of `repo-tools check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `book/src/diffs/` matches the chapters.
    Diffs,
    /// Every include of the book resolves; chapter anchors are paired.
    Includes,
    /// Every chapter page shows every changed file.
    Pages,
    /// Every chapter's pages show enough of its changed lines.
    Coverage,
    /// Every listing of a chapter file names the file.
    Listings,
    /// No page shows more than `length::MAX_VISIBLE` listing lines.
    Length,
    /// Shared dependencies have the same versions and specs.
    Lockstep,
}

impl Check {
    /// All checks, in the order `check` runs them.
    pub const ALL: [Check; 7] = [
        Check::Diffs,
        Check::Includes,
        Check::Pages,
        Check::Coverage,
        Check::Listings,
        Check::Length,
        Check::Lockstep,
    ];

    /// The name of the check's own subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Check::Diffs => "check-diffs",
            Check::Includes => "check-includes",
            Check::Pages => "check-pages",
            Check::Coverage => "check-coverage",
            Check::Listings => "check-listings",
            Check::Length => "check-length",
            Check::Lockstep => "check-lockstep",
        }
    }

    /// What to do about its problems, if there is a general fix.
    fn hint(self) -> Option<&'static str> {
        match self {
            Check::Diffs => Some("hint: run scripts/gen-diffs to regenerate book/src/diffs/"),
            Check::Coverage => Some(
                "hint: show the lines on the chapter's pages, or list the file with a reason in book/not-shown.toml",
            ),
            _ => None,
        }
    }

    /// Runs the check; `diffs` are the chapter diffs, computed once.
    pub fn run(self, repo: &Repo, diffs: &[ChapterDiff]) -> Result<Vec<Problem>> {
        match self {
            Check::Diffs => diff::check(repo, diffs),
            Check::Includes => includes::check(repo),
            Check::Pages => pages::check(repo, diffs),
            Check::Coverage => coverage::check(repo, diffs),
            Check::Listings => listings::check(repo),
            Check::Length => length::check(repo),
            Check::Lockstep => lockstep::check(repo),
        }
    }
}

/// Runs `checks`, writes each problem on its own line and `ok: NAME` for
/// each passing check to `out`. Returns whether all passed.
pub fn run(repo: &Repo, checks: &[Check], out: &mut impl Write) -> Result<bool> {
    let needs_diffs = checks
        .iter()
        .any(|c| matches!(c, Check::Diffs | Check::Pages | Check::Coverage));
    let diffs = if needs_diffs {
        diff::chapter_diffs(repo)?
    } else {
        Vec::new()
    };
    let mut all_ok = true;
    for check in checks {
        let problems = check.run(repo, &diffs)?;
        for p in &problems {
            writeln!(out, "{p}")?;
        }
        if problems.is_empty() {
            writeln!(out, "ok: {}", check.name())?;
        } else {
            all_ok = false;
            if let Some(hint) = check.hint() {
                writeln!(out, "{hint}")?;
            }
            let n = problems.len();
            let plural = if n == 1 { "" } else { "s" };
            writeln!(out, "FAILED: {} ({n} problem{plural})", check.name())?;
        }
    }
    Ok(all_ok)
}
