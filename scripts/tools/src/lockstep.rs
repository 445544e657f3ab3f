//! The chapters move in lockstep: a crate they share is locked at the same
//! versions and declared with the same spec in every chapter, so the shared
//! target directory builds it once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{Context, Result};
use toml::{Table, Value};

use crate::repo::{self, Chapter, Repo};
use crate::report::Problem;

/// The dependency tables compared between chapters.
const SECTIONS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];

/// Runs both lockstep checks over the chapters.
pub fn check(repo: &Repo) -> Result<Vec<Problem>> {
    let chapters = repo.chapters()?;
    let mut problems = check_locks(repo, &chapters)?;
    problems.extend(check_manifests(repo, &chapters)?);
    Ok(problems)
}

/// A TOML file of a chapter, parsed.
struct Parsed {
    chapter: String,
    path: String,
    text: String,
    table: Table,
}

fn parse(repo: &Repo, chapter: &Chapter, file: &str) -> Result<Option<Parsed>> {
    parse_at(repo, &chapter.name, &chapter.dir.join(file))
}

/// The TOML file at `abs`, parsed; `owner` names it in messages.
fn parse_at(repo: &Repo, owner: &str, abs: &std::path::Path) -> Result<Option<Parsed>> {
    let abs = abs.to_path_buf();
    if !abs.is_file() {
        return Ok(None);
    }
    let text = repo::read_string(&abs)?;
    let table: Table = text
        .parse()
        .with_context(|| format!("parsing {}", abs.display()))?;
    Ok(Some(Parsed {
        chapter: owner.to_string(),
        path: repo.rel(&abs),
        text,
        table,
    }))
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .map(|i| i + 1)
}

fn problem(file: &Parsed, line: Option<usize>, message: String) -> Problem {
    Problem {
        path: file.path.clone(),
        line,
        message,
    }
}

/// (a) A registry package locked by several chapters has the same
/// version in each, within each semver-compatible line: `0.4.x` or `1.x`.
/// A chapter may add another line of the same package (a new dependency can
/// bring in an older major version), but where two chapters both use a
/// line they must agree, or the shared target compiles it twice. The
/// chapters' own packages (no `source`) are skipped. The lock of the root
/// workspace, if any (the tools, and kvbench, which builds the last
/// chapter), comes last and follows the same rule.
fn check_locks(repo: &Repo, chapters: &[Chapter]) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    // (name, line) -> [(lock file, versions)] in chapter order
    type Seen = BTreeMap<(String, String), Vec<(usize, BTreeSet<String>)>>;
    let mut seen = Seen::new();
    let mut locks = Vec::new();
    let mut files = Vec::new();
    for chapter in chapters {
        files.push((
            parse(repo, chapter, "Cargo.lock")?,
            format!("chapters/{}/Cargo.lock", chapter.name),
        ));
    }
    // The root's lock is optional: a tree of chapters alone has none.
    if let Some(root) = parse_at(repo, "the root workspace", &repo.root.join("Cargo.lock"))? {
        files.push((Some(root), "Cargo.lock".to_string()));
    }
    for (lock, path) in files {
        let Some(lock) = lock else {
            problems.push(Problem::file(
                path,
                "missing: the tests build with --locked",
            ));
            continue;
        };
        let mut versions: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let packages = lock.table.get("package").and_then(Value::as_array);
        for package in packages.into_iter().flatten() {
            let field = |key| package.get(key).and_then(Value::as_str);
            if let (Some(name), Some(version), Some(_)) =
                (field("name"), field("version"), field("source"))
            {
                let key = (name.to_string(), compatible_line(version));
                versions.entry(key).or_default().insert(version.to_string());
            }
        }
        for (key, set) in versions {
            seen.entry(key).or_default().push((locks.len(), set));
        }
        locks.push(lock);
    }
    for ((name, line), entries) in &seen {
        let Some(((first, reference), rest)) = entries.split_first() else {
            continue;
        };
        for (i, versions) in rest.iter().filter(|(_, v)| v != reference) {
            let lock = &locks[*i];
            let at = line_of(&lock.text, &format!("name = \"{name}\""));
            let message = format!(
                "`{name}` {line} is locked at {} here but at {} in {}",
                join(versions),
                join(reference),
                locks[*first].chapter
            );
            problems.push(problem(lock, at, message));
        }
    }
    Ok(problems)
}

/// The semver-compatible line of a version, as Cargo unifies them:
/// `1.2.3` -> `1.x`, `0.4.3` -> `0.4.x`, `0.0.3` -> `0.0.3`.
fn compatible_line(version: &str) -> String {
    let mut parts = version.split(['.', '-', '+']);
    match (parts.next(), parts.next(), parts.next()) {
        (Some("0"), Some("0"), Some(patch)) => format!("0.0.{patch}"),
        (Some("0"), Some(minor), _) => format!("0.{minor}.x"),
        (Some(major), _, _) => format!("{major}.x"),
        _ => version.to_string(),
    }
}

fn join(versions: &BTreeSet<String>) -> String {
    versions.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::compatible_line;

    #[test]
    fn versions_group_into_semver_compatible_lines() {
        assert_eq!(compatible_line("1.12.1"), "1.x");
        assert_eq!(compatible_line("0.4.3"), "0.4.x");
        assert_eq!(compatible_line("0.0.7"), "0.0.7");
        assert_eq!(compatible_line("1.0.0-alpha.1"), "1.x");
    }
}

/// How a dependency is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    version: Option<String>,
    features: BTreeSet<String>,
    default_features: bool,
    optional: bool,
}

impl Spec {
    fn from_value(value: &Value) -> Spec {
        let mut spec = Spec {
            version: value.as_str().map(str::to_string),
            features: BTreeSet::new(),
            default_features: true,
            optional: false,
        };
        if let Some(table) = value.as_table() {
            let get = |key: &str| table.get(key);
            spec.version = get("version").and_then(Value::as_str).map(str::to_string);
            let features = get("features").and_then(Value::as_array);
            let features = features.into_iter().flatten().filter_map(Value::as_str);
            spec.features = features.map(str::to_string).collect();
            let default = get("default-features").or_else(|| get("default_features"));
            spec.default_features = default.and_then(Value::as_bool).unwrap_or(true);
            spec.optional = get("optional").and_then(Value::as_bool).unwrap_or(false);
        }
        spec
    }

    /// Whether this spec is `before` with, at most, more features. A
    /// chapter that needs another feature of a shared crate enables it
    /// there and in the chapters after; that crate then builds once per
    /// set of features, which costs less than earlier chapters declaring
    /// features they do not use.
    fn grows(&self, before: &Spec) -> bool {
        self.default_features == before.default_features
            && self.optional == before.optional
            && self.features.is_superset(&before.features)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let features: Vec<String> = self.features.iter().map(|s| format!("{s:?}")).collect();
        write!(f, "features = [{}]", features.join(", "))?;
        write!(f, ", default-features = {}", self.default_features)?;
        write!(f, ", optional = {}", self.optional)
    }
}

/// One declared dependency.
struct Declared<'a> {
    file: &'a Parsed,
    section: &'static str,
    name: String,
    spec: Spec,
}

impl Declared<'_> {
    fn line(&self) -> Option<usize> {
        let mut section = "";
        for (i, l) in self.file.text.lines().enumerate() {
            let l = l.trim();
            if let Some(header) = l.strip_prefix('[') {
                section = header.trim_end_matches(']').trim();
                if section == format!("{}.{}", self.section, self.name) {
                    return Some(i + 1);
                }
            } else if section == self.section
                && l.strip_prefix(self.name.as_str())
                    .is_some_and(|r| r.starts_with([' ', '=', '.']))
            {
                return Some(i + 1);
            }
        }
        None
    }
}

/// (b) A dependency declared by several chapters has the same version
/// string everywhere, and in the same section the same default-features
/// and optional, and the features of the chapter before it, or more.
fn check_manifests(repo: &Repo, chapters: &[Chapter]) -> Result<Vec<Problem>> {
    let mut files = Vec::new();
    for chapter in chapters {
        files.extend(parse(repo, chapter, "Cargo.toml")?);
    }
    let mut by_name: BTreeMap<String, Vec<Declared>> = BTreeMap::new();
    for file in &files {
        for section in SECTIONS {
            let deps = file.table.get(section).and_then(Value::as_table);
            for (name, value) in deps.into_iter().flatten() {
                let spec = Spec::from_value(value);
                let declared = Declared {
                    file,
                    section,
                    name: name.clone(),
                    spec,
                };
                by_name.entry(name.clone()).or_default().push(declared);
            }
        }
    }
    let mut problems = Vec::new();
    for (name, decls) in &by_name {
        let Some(first) = decls.first() else {
            continue;
        };
        for d in decls
            .iter()
            .filter(|d| d.file.chapter != first.file.chapter)
        {
            if d.spec.version != first.spec.version {
                let message = format!(
                    "`{name}` has version {} here but {} in {}",
                    show(&d.spec.version),
                    show(&first.spec.version),
                    first.file.path
                );
                problems.push(problem(d.file, d.line(), message));
            }
        }
        for section in SECTIONS {
            let in_section: Vec<_> = decls.iter().filter(|d| d.section == section).collect();
            // Each declaration against the one of the chapter before it.
            for pair in in_section.windows(2) {
                let (before, d) = (pair[0], pair[1]);
                if d.file.chapter == before.file.chapter || d.spec.grows(&before.spec) {
                    continue;
                }
                let message = format!(
                    "[{section}] `{name}` has {} here but {} in {}: a later chapter \
                     may add features, but not drop any or change the others",
                    d.spec, before.spec, before.file.path
                );
                problems.push(problem(d.file, d.line(), message));
            }
        }
    }
    Ok(problems)
}

fn show(version: &Option<String>) -> String {
    version
        .as_ref()
        .map_or("(none)".to_string(), |v| format!("{v:?}"))
}
