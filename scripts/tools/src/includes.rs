//! mdBook `{{#include}}` links and `ANCHOR:` markers.
//!
//! mdBook renders an include of a missing anchor as nothing at all, so these
//! checks find such links before a reader does.

use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use crate::repo::{self, Repo};
use crate::report::Problem;

/// Which lines of the file an include takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The whole file.
    Whole,
    /// The lines between `ANCHOR: name` and `ANCHOR_END: name`.
    Anchor(String),
    /// A range of 1-based lines, `end` included; `start..=start` for one line.
    Lines {
        /// First line; `None` for `PATH::END`.
        start: Option<usize>,
        /// Last line; `None` for `PATH:START:`.
        end: Option<usize>,
        /// The END text when it is not a number (mdBook then reads to the end).
        bad_end: Option<String>,
    },
}

/// One `{{#include ...}}` or `{{#rustdoc_include ...}}` link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The 1-based line the link starts on.
    pub line: usize,
    /// The whole link text, `{{#include ...}}`.
    pub text: String,
    /// The file, relative to the directory of the page.
    pub path: String,
    /// Which lines of it.
    pub part: Part,
}

/// The include links of a page, found as mdBook's link regex finds them:
/// `\{{#...}}` is an escaped link and is skipped.
pub fn find_links(text: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with("\\{{#") {
            // mdBook's escape: `\{{#.*}}`, greedy to the line's last `}}`.
            let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
            if let Some(close) = line.rfind("}}").filter(|&c| c >= 4) {
                i += close + 2;
                continue;
            }
        } else if rest.starts_with("{{")
            && let Some((len, kind, args)) = parse_link(rest)
        {
            let spec = args.split_whitespace().next().unwrap_or("");
            if kind == "include" || kind == "rustdoc_include" {
                let (path, part) = parse_spec(spec);
                links.push(Link {
                    line: text[..i].matches('\n').count() + 1,
                    text: rest[..len].to_string(),
                    path,
                    part,
                });
            }
            i += len;
            continue;
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    links
}

/// Matches `{{\s*#(\w+)\s+([^}]+)}}` at the start of `s`: returns the
/// length of the match, the link type and its arguments.
fn parse_link(s: &str) -> Option<(usize, &str, &str)> {
    let after_open = s.strip_prefix("{{")?;
    let body = after_open.trim_start();
    let body = body.strip_prefix('#')?;
    let kind_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (kind, after_kind) = body.split_at(kind_len);
    let args = after_kind.trim_start();
    if kind.is_empty() || args.len() == after_kind.len() {
        return None;
    }
    let args_len = args.find('}').unwrap_or(args.len());
    if args_len == 0 || !args[args_len..].starts_with("}}") {
        return None;
    }
    let len = s.len() - args.len() + args_len + 2;
    Some((len, kind, &args[..args_len]))
}

/// Splits `PATH[:ANCHOR | :START[:END]]` as mdBook does.
fn parse_spec(spec: &str) -> (String, Part) {
    let Some((path, rest)) = spec.split_once(':') else {
        return (spec.to_string(), Part::Whole);
    };
    let mut parts = rest.splitn(3, ':');
    let first = parts.next().unwrap_or("");
    let start = match first.parse::<usize>() {
        Ok(n) => Some(n),
        Err(_) if first.is_empty() => None,
        Err(_) => return (path.to_string(), Part::Anchor(first.to_string())),
    };
    let part = match (start, parts.next()) {
        (None, None) => Part::Whole,
        (Some(s), None) => Part::Lines {
            start: Some(s),
            end: Some(s),
            bad_end: None,
        },
        (start, Some(end_text)) => match end_text.parse::<usize>() {
            Ok(end) => Part::Lines {
                start,
                end: Some(end),
                bad_end: None,
            },
            Err(_) if start.is_none() => Part::Whole,
            Err(_) => Part::Lines {
                start,
                end: None,
                bad_end: (!end_text.is_empty()).then(|| end_text.to_string()),
            },
        },
    };
    (path.to_string(), part)
}

/// The anchor name after the first `marker` (`ANCHOR:` or `ANCHOR_END:`)
/// in `line` that has one, like mdBook's `ANCHOR:\s*([\w_-]+)`: the name
/// runs to the end of the word, so `foo_bar` is not `foo`.
pub fn anchor_name<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = line[from..].find(marker) {
        let after = line[from + at + marker.len()..].trim_start();
        let len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(after.len());
        if len > 0 {
            return Some(&after[..len]);
        }
        from += at + marker.len();
    }
    None
}

/// Joins `rel` to `dir` and removes `.` and `..` without touching the disk.
pub fn normalize(dir: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in dir.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The pages: every `.md` file below `book/src`, in path order.
pub fn pages(repo: &Repo) -> Result<Vec<PathBuf>> {
    let src = repo.book_src();
    if !src.is_dir() {
        return Ok(Vec::new());
    }
    Ok(repo::walk_files(&src)?
        .into_iter()
        .filter(|(rel, _)| rel.ends_with(".md"))
        .map(|(_, abs)| abs)
        .collect())
}

/// Checks every include of every page, then the anchors of the chapters.
pub fn check(repo: &Repo) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for page in pages(repo)? {
        let text = repo::read_string(&page)?;
        let dir = page.parent().unwrap_or(&repo.root);
        for link in find_links(&text) {
            let target = normalize(dir, &link.path);
            if let Some(message) = check_link(&link, &target, &repo.rel(&target)) {
                let message = format!("{}: {message}", link.text);
                problems.push(Problem::line(repo.rel(&page), link.line, message));
            }
        }
    }
    problems.extend(check_chapter_anchors(repo)?);
    Ok(problems)
}

/// What is wrong with one link whose file is `target` (`shown` in messages).
fn check_link(link: &Link, target: &Path, shown: &str) -> Option<String> {
    if !target.is_file() {
        return Some(format!("no such file {shown}"));
    }
    if link.part == Part::Whole {
        return None;
    }
    let Ok(bytes) = std::fs::read(target) else {
        return Some(format!("cannot read {shown}"));
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Some(format!("{shown} is not UTF-8"));
    };
    match &link.part {
        Part::Whole => None,
        Part::Anchor(name) => {
            let has = |marker| text.lines().any(|l| anchor_name(l, marker) == Some(name));
            match (has("ANCHOR:"), has("ANCHOR_END:")) {
                (true, true) => None,
                (false, _) => Some(format!("no line `ANCHOR: {name}` in {shown}")),
                (true, false) => Some(format!("no line `ANCHOR_END: {name}` in {shown}")),
            }
        }
        Part::Lines {
            start,
            end,
            bad_end,
        } => {
            let count = text.lines().count();
            if let Some(bad) = bad_end {
                return Some(format!("end {bad:?} is not a line number"));
            }
            if *start == Some(0) || *end == Some(0) {
                return Some("line numbers start at 1".to_string());
            }
            if let (Some(s), Some(e)) = (start, end)
                && s > e
            {
                return Some(format!("empty range: line {s} is after line {e}"));
            }
            let last = end.or(*start).unwrap_or(0);
            (last > count)
                .then(|| format!("line {last} is past the end of {shown} ({count} lines)"))
        }
    }
}

/// Every `ANCHOR: x` in the chapters has a later `ANCHOR_END: x` in the same
/// file, and every `ANCHOR_END: x` an earlier `ANCHOR: x`.
pub fn check_chapter_anchors(repo: &Repo) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for (_, path) in repo::walk_files(&repo.root.join("chapters"))? {
        let Ok(text) = String::from_utf8(repo::read(&path)?) else {
            continue;
        };
        problems.extend(anchor_pairs(&repo.rel(&path), &text));
    }
    Ok(problems)
}

/// The unmatched anchors of one file.
pub fn anchor_pairs(path: &str, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut open: Vec<(&str, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(name) = anchor_name(line, "ANCHOR:") {
            if let Some((_, first)) = open.iter().find(|(o, _)| *o == name) {
                let message = format!("`ANCHOR: {name}` is already open (line {first})");
                problems.push(Problem::line(path, n, message));
            } else {
                open.push((name, n));
            }
        }
        if let Some(name) = anchor_name(line, "ANCHOR_END:") {
            match open.iter().position(|(o, _)| *o == name) {
                Some(at) => {
                    open.remove(at);
                }
                None => {
                    let message =
                        format!("`ANCHOR_END: {name}` without an `ANCHOR: {name}` before it");
                    problems.push(Problem::line(path, n, message));
                }
            }
        }
    }
    for (name, n) in open {
        let message = format!("`ANCHOR: {name}` without an `ANCHOR_END: {name}` after it");
        problems.push(Problem::line(path, n, message));
    }
    problems
}
