//! The repository layout: the root, its chapters and the files in them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A repository checkout: a directory holding `chapters/` and `book/`.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The repository root.
    pub root: PathBuf,
}

/// One chapter crate, `chapters/NN-slug/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chapter {
    /// The number `NN` of the directory name.
    pub number: u32,
    /// The directory name, e.g. `01-service`.
    pub name: String,
    /// The absolute path of the directory.
    pub dir: PathBuf,
}

impl Chapter {
    /// The chapter number as two digits, e.g. `02`.
    pub fn nn(&self) -> String {
        format!("{:02}", self.number)
    }
}

impl Repo {
    /// Uses `root` as the repository root; it must hold `chapters/`.
    pub fn at(root: &Path) -> Result<Repo> {
        if !root.join("chapters").is_dir() {
            bail!("{} has no chapters/ directory", root.display());
        }
        // Absolute, so that `..` in include paths resolves lexically.
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        Ok(Repo { root })
    }

    /// Walks up from `start` to the first directory holding both `chapters/`
    /// and `book/`.
    pub fn find(start: &Path) -> Result<Repo> {
        for dir in start.ancestors() {
            if dir.join("chapters").is_dir() && dir.join("book").is_dir() {
                return Repo::at(dir);
            }
        }
        bail!(
            "no directory holding chapters/ and book/ above {}; pass --root DIR",
            start.display()
        )
    }

    /// `book/src`, where the pages live.
    pub fn book_src(&self) -> PathBuf {
        self.root.join("book").join("src")
    }

    /// `book/src/diffs`, the tree written by `gen-diffs`.
    pub fn diffs_dir(&self) -> PathBuf {
        self.book_src().join("diffs")
    }

    /// `path` relative to the root, with `/` separators, for messages.
    pub fn rel(&self, path: &Path) -> String {
        slash_path(path.strip_prefix(&self.root).unwrap_or(path))
    }

    /// The chapters, sorted by number. Directories whose name does not start
    /// with two digits and a dash are not chapters.
    pub fn chapters(&self) -> Result<Vec<Chapter>> {
        let dir = self.root.join("chapters");
        let mut chapters = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = match chapter_number(&name) {
                Some(n) if entry.path().is_dir() => n,
                _ => continue,
            };
            chapters.push(Chapter {
                number,
                name,
                dir: entry.path(),
            });
        }
        chapters.sort_by(|a, b| (a.number, &a.name).cmp(&(b.number, &b.name)));
        if let Some(pair) = chapters.windows(2).find(|w| w[0].number == w[1].number) {
            bail!(
                "chapters {} and {} have the same number",
                pair[0].name,
                pair[1].name
            );
        }
        Ok(chapters)
    }

    /// Finds a chapter by number (`1`, `01`), directory name (`01-service`)
    /// or path (`chapters/01-service/`).
    pub fn chapter(&self, id: &str) -> Result<Chapter> {
        let id = id.trim_end_matches('/');
        let id = id.strip_prefix("chapters/").unwrap_or(id);
        let chapters = self.chapters()?;
        let found = match id.parse::<u32>() {
            Ok(n) => chapters.iter().find(|c| c.number == n),
            Err(_) => chapters.iter().find(|c| c.name == id),
        };
        match found {
            Some(c) => Ok(c.clone()),
            None => {
                let names: Vec<&str> = chapters.iter().map(|c| c.name.as_str()).collect();
                bail!("no chapter {id:?}; chapters are: {}", names.join(", "))
            }
        }
    }
}

/// The number of a chapter directory name `NN-slug`.
fn chapter_number(name: &str) -> Option<u32> {
    let (digits, _slug) = name.split_once('-')?;
    if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A path with `/` separators.
pub fn slash_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// The files below `dir` that git would track: `.gitignore` files are
/// honoured (also those of parent directories, even outside a git
/// checkout), and `target/` directories and `Cargo.lock` files are always
/// skipped. Returns `(path relative to dir with '/', absolute path)`,
/// sorted by relative path.
pub fn walk_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .git_ignore(true)
        .parents(true)
        .require_git(false)
        .filter_entry(|e| {
            let name = e.file_name();
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            !(is_dir && (name == "target" || name == ".git")) && name != "Cargo.lock"
        })
        .build();
    let mut files = Vec::new();
    for entry in walker {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.into_path();
        let rel = path
            .strip_prefix(dir)
            .with_context(|| format!("{} is not below {}", path.display(), dir.display()))?;
        files.push((slash_path(rel), path.clone()));
    }
    files.sort();
    Ok(files)
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
