//! Unified diffs between chapters, and the generated `book/src/diffs/` tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use similar::{ChangeTag, TextDiff};

use crate::repo::{self, Chapter, Repo};
use crate::report::Problem;

/// How a file changed from one chapter to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Only in the newer chapter.
    Added,
    /// Only in the older chapter.
    Removed,
    /// In both, with different content.
    Modified,
}

impl Change {
    /// The word used in `summary.txt`.
    pub fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        }
    }
}

/// The diff of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// The path relative to the chapter directory, with `/`.
    pub path: String,
    /// Added, removed or modified.
    pub change: Change,
    /// Either side is not UTF-8.
    pub binary: bool,
    /// Lines added.
    pub added: usize,
    /// Lines removed.
    pub removed: usize,
    /// The unified diff, headers included, ending with a newline.
    pub text: String,
}

/// Diffs one file; `None` on a side where it does not exist. Returns `None`
/// when the contents are equal.
pub fn diff_file(path: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> Option<FileDiff> {
    let change = match (old, new) {
        (None, None) => return None,
        (Some(a), Some(b)) if a == b => return None,
        (None, Some(_)) => Change::Added,
        (Some(_), None) => Change::Removed,
        (Some(_), Some(_)) => Change::Modified,
    };
    let a_name = old.map_or_else(|| "/dev/null".to_string(), |_| format!("a/{path}"));
    let b_name = new.map_or_else(|| "/dev/null".to_string(), |_| format!("b/{path}"));
    let old_text = old.map(std::str::from_utf8).unwrap_or(Ok(""));
    let new_text = new.map(std::str::from_utf8).unwrap_or(Ok(""));
    let (Ok(old_text), Ok(new_text)) = (old_text, new_text) else {
        return Some(FileDiff {
            path: path.to_string(),
            change,
            binary: true,
            added: 0,
            removed: 0,
            text: format!("Binary files {a_name} and {b_name} differ\n"),
        });
    };
    let diff = TextDiff::from_lines(old_text, new_text);
    let (mut added, mut removed) = (0, 0);
    for c in diff.iter_all_changes() {
        match c.tag() {
            ChangeTag::Insert => added += 1,
            ChangeTag::Delete => removed += 1,
            ChangeTag::Equal => {}
        }
    }
    let mut text = diff
        .unified_diff()
        .context_radius(3)
        .header(&a_name, &b_name)
        .to_string();
    if text.is_empty() {
        // An empty file added or removed has no hunk: keep the headers.
        text = format!("--- {a_name}\n+++ {b_name}\n");
    }
    Some(FileDiff {
        path: path.to_string(),
        change,
        binary: false,
        added,
        removed,
        text,
    })
}

/// Which lines a diff looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Every line, as the files are.
    All,
    /// Every line but mdBook's `ANCHOR:` / `ANCHOR_END:` markers, which are
    /// markup for the book, not code: the book's diffs leave them out.
    WithoutAnchors,
}

/// Removes the lines that hold an mdBook anchor marker from UTF-8 text;
/// other bytes are returned as they are.
pub fn strip_anchor_lines(bytes: Vec<u8>) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return bytes;
    };
    text.split_inclusive('\n')
        .filter(|line| !line.contains("ANCHOR:") && !line.contains("ANCHOR_END:"))
        .collect::<String>()
        .into_bytes()
}

/// Diffs every file from directory `old` to directory `new` (see
/// [`repo::walk_files`] for which files count), in path order.
pub fn diff_dirs(old: &Path, new: &Path, lines: Lines) -> Result<Vec<FileDiff>> {
    let old_files: BTreeMap<String, PathBuf> = repo::walk_files(old)?.into_iter().collect();
    let new_files: BTreeMap<String, PathBuf> = repo::walk_files(new)?.into_iter().collect();
    let paths: BTreeSet<&String> = old_files.keys().chain(new_files.keys()).collect();
    let read = |file: Option<&PathBuf>| -> Result<Option<Vec<u8>>> {
        let Some(file) = file else { return Ok(None) };
        let bytes = repo::read(file)?;
        Ok(Some(match lines {
            Lines::All => bytes,
            Lines::WithoutAnchors => strip_anchor_lines(bytes),
        }))
    };
    let mut diffs = Vec::new();
    for path in paths {
        let old_bytes = read(old_files.get(path))?;
        let new_bytes = read(new_files.get(path))?;
        diffs.extend(diff_file(path, old_bytes.as_deref(), new_bytes.as_deref()));
    }
    Ok(diffs)
}

/// All file diffs as one text, as `repo-tools diff` prints it.
pub fn render(diffs: &[FileDiff]) -> String {
    diffs.iter().map(|d| d.text.as_str()).collect()
}

/// The `summary.txt` of a chapter: one aligned line per changed file.
pub fn summary(diffs: &[FileDiff]) -> String {
    if diffs.is_empty() {
        return "  no changes\n".to_string();
    }
    let width = diffs.iter().map(|d| d.path.len()).max().unwrap_or(0);
    let mut out = String::new();
    for d in diffs {
        let counts = match (d.binary, d.change) {
            (true, _) => "(binary)".to_string(),
            (false, Change::Added) => format!("(+{})", d.added),
            (false, Change::Removed) => format!("(-{})", d.removed),
            (false, Change::Modified) => format!("(+{} -{})", d.added, d.removed),
        };
        let line = format!("  {:<8}  {:<width$}  {counts}", d.change.word(), d.path);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The changes from one chapter to the next.
#[derive(Debug, Clone)]
pub struct ChapterDiff {
    /// The newer chapter, N.
    pub chapter: Chapter,
    /// The changed files from chapter N-1.
    pub files: Vec<FileDiff>,
}

impl ChapterDiff {
    /// Where the diff of `file` goes, relative to the repository root.
    pub fn diff_path(&self, file: &FileDiff) -> String {
        format!("book/src/diffs/{}/{}.diff", self.chapter.nn(), file.path)
    }

    /// Where `summary.txt` goes, relative to the repository root.
    pub fn summary_path(&self) -> String {
        format!("book/src/diffs/{}/summary.txt", self.chapter.nn())
    }
}

/// Diffs every pair of consecutive chapters, as the book shows them.
pub fn chapter_diffs(repo: &Repo) -> Result<Vec<ChapterDiff>> {
    let chapters = repo.chapters()?;
    chapters
        .windows(2)
        .map(|pair| {
            Ok(ChapterDiff {
                chapter: pair[1].clone(),
                files: diff_dirs(&pair[0].dir, &pair[1].dir, Lines::WithoutAnchors)?,
            })
        })
        .collect()
}

/// The whole `book/src/diffs/` tree: path relative to the root -> content.
pub fn expected_tree(diffs: &[ChapterDiff]) -> BTreeMap<String, String> {
    let mut tree = BTreeMap::new();
    for cd in diffs {
        for file in &cd.files {
            tree.insert(cd.diff_path(file), file.text.clone());
        }
        tree.insert(cd.summary_path(), summary(&cd.files));
    }
    tree
}

/// The files now under `book/src/diffs/`, relative to the root.
fn files_on_disk(repo: &Repo) -> Result<Vec<String>> {
    let dir = repo.diffs_dir();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("reading {}", dir.display()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(repo.rel(&path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What `gen-diffs` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Files written because they were missing or stale.
    pub written: usize,
    /// Files already up to date.
    pub unchanged: usize,
    /// Stale files removed.
    pub removed: usize,
}

/// Writes `book/src/diffs/`: rewrites only changed files, removes stale
/// files and the directories left empty.
pub fn generate(repo: &Repo) -> Result<GenStats> {
    let tree = expected_tree(&chapter_diffs(repo)?);
    let mut stats = GenStats::default();
    for path in files_on_disk(repo)? {
        if !tree.contains_key(&path) {
            let abs = repo.root.join(&path);
            fs::remove_file(&abs).with_context(|| format!("removing {}", abs.display()))?;
            stats.removed += 1;
        }
    }
    remove_empty_dirs(&repo.diffs_dir())?;
    for (path, content) in &tree {
        let abs = repo.root.join(path);
        if fs::read(&abs).is_ok_and(|old| old == content.as_bytes()) {
            stats.unchanged += 1;
            continue;
        }
        if let Some(parent) = abs.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&abs, content).with_context(|| format!("writing {}", abs.display()))?;
        stats.written += 1;
    }
    Ok(stats)
}

/// Removes the empty directories below and including `dir`.
fn remove_empty_dirs(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            remove_empty_dirs(&path)?;
        }
    }
    let empty = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none();
    if empty {
        fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Compares `book/src/diffs/` on disk with the diffs of the chapters.
pub fn check(repo: &Repo, diffs: &[ChapterDiff]) -> Result<Vec<Problem>> {
    let tree = expected_tree(diffs);
    let on_disk = files_on_disk(repo)?;
    let mut problems = Vec::new();
    for (path, content) in &tree {
        let abs = repo.root.join(path);
        match fs::read(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                problems.push(Problem::file(path, "missing generated diff"))
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", abs.display())),
            Ok(old) if old != content.as_bytes() => {
                problems.push(Problem::file(path, "stale: differs from the chapters"))
            }
            Ok(_) => {}
        }
    }
    for path in on_disk {
        if !tree.contains_key(&path) {
            problems.push(Problem::file(&path, "extra file: no such change"));
        }
    }
    Ok(problems)
}
