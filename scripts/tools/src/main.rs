//! `repo-tools`: the command line over the `repo_tools` library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use repo_tools::checks::{self, Check};
use repo_tools::repo::Repo;
use repo_tools::{coverage, diff, length};

/// Diffs between chapters and checks of the book.
#[derive(Parser)]
#[command(name = "repo-tools")]
struct Cli {
    /// The repository root [default: the nearest directory, going up from
    /// the current one, that holds chapters/ and book/]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a unified diff (3 lines of context) from chapter A to chapter B.
    ///
    /// A and B are chapter numbers (`1`, `01`) or directory names
    /// (`01-service`). Files ignored by .gitignore are left out, and so are
    /// target/ and Cargo.lock: machine-made noise, not code to read.
    Diff {
        /// The older chapter.
        a: String,
        /// The newer chapter.
        b: String,
    },
    /// Write book/src/diffs/NN/ for every chapter N after the first.
    ///
    /// One PATH.diff per file changed since chapter N-1, plus summary.txt.
    /// The whole book/src/diffs/ tree is owned by this command: stale files
    /// are removed.
    GenDiffs,
    /// Run every check below; exit 1 if any fails.
    Check,
    /// book/src/diffs/ is what gen-diffs would write.
    CheckDiffs,
    /// Every {{#include}} of the book resolves; chapter anchors are paired.
    CheckIncludes,
    /// Every chapter page exists and shows every file the chapter changes.
    CheckPages,
    /// Every chapter's pages show at least 95% of its changed lines.
    CheckCoverage,
    /// Every listing of a chapter file names the file in the paragraph before it.
    CheckListings,
    /// No page shows more than 1,000 listing lines outside <details>.
    CheckLength,
    /// Print how many listing lines each page shows, folded or not.
    Length,
    /// Print how many of each chapter's changed lines its pages show.
    Coverage,
    /// Dependencies shared by chapters have the same versions and specs.
    CheckLockstep,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let cli = Cli::parse();
    let repo = match &cli.root {
        Some(root) => Repo::at(root)?,
        None => Repo::find(&std::env::current_dir().context("reading the current directory")?)?,
    };
    let mut out = io::stdout().lock();
    let checks: &[Check] = match cli.command {
        Command::Diff { a, b } => {
            let (a, b) = (repo.chapter(&a)?, repo.chapter(&b)?);
            let text = diff::render(&diff::diff_dirs(&a.dir, &b.dir, diff::Lines::All)?);
            return match out.write_all(text.as_bytes()) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
                other => other.context("writing the diff").map(|()| true),
            };
        }
        Command::GenDiffs => {
            let stats = diff::generate(&repo)?;
            writeln!(
                out,
                "book/src/diffs: {} written, {} unchanged, {} removed",
                stats.written, stats.unchanged, stats.removed
            )?;
            return Ok(true);
        }
        Command::Check => &Check::ALL,
        Command::CheckDiffs => &[Check::Diffs],
        Command::CheckIncludes => &[Check::Includes],
        Command::CheckPages => &[Check::Pages],
        Command::CheckCoverage => &[Check::Coverage],
        Command::CheckListings => &[Check::Listings],
        Command::CheckLength => &[Check::Length],
        Command::Length => {
            out.write_all(length::report(&repo)?.as_bytes())?;
            return Ok(true);
        }
        Command::Coverage => {
            let diffs = diff::chapter_diffs(&repo)?;
            let report = coverage::report(&coverage::compute(&repo, &diffs)?);
            out.write_all(report.as_bytes())?;
            return Ok(true);
        }
        Command::CheckLockstep => &[Check::Lockstep],
    };
    checks::run(&repo, checks, &mut out)
}
