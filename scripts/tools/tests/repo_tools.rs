//! Tests on small fake repositories made in temporary directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use repo_tools::checks::{self, Check};
use repo_tools::diff::{self, diff_file};
use repo_tools::includes::{Part, find_links};
use repo_tools::repo::Repo;
use tempfile::TempDir;

const LIB_01: &str = "\
//! Chapter one.

// ANCHOR: greet
pub fn greet() -> &'static str {
    \"hello\"
}
// ANCHOR_END: greet

pub fn one() -> u32 {
    1
}
";

const LIB_02: &str = "\
//! Chapter two.

// ANCHOR: greet
pub fn greet() -> &'static str {
    \"hello\"
}
// ANCHOR_END: greet

// ANCHOR: greet_all
pub fn greet_all() -> String {
    greet().repeat(2)
}
// ANCHOR_END: greet_all
";

const EXTRA_02: &str = "// ANCHOR: extra\npub struct Extra;\n// ANCHOR_END: extra\n";

const PAGE_02: &str = "\
# Chapter two

{{#include diffs/02/Cargo.toml.diff}}

{{#include diffs/02/src/lib.rs.diff}}

{{#rustdoc_include ../../chapters/02-b/src/lib.rs:greet_all}}

{{#include ../../chapters/02-b/src/extra.rs:extra}}

Lines: {{#include ../../chapters/02-b/src/lib.rs:3:7}}

Escaped: \\{{#include no/such/file.rs}}

{{#include diffs/02/notes.txt.diff}}
";

fn manifest(name: &str, bytes: &str, serde: &str) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [dependencies]\nbytes = {bytes}\nserde = {serde}\n\n[lib]\nname = \"kv\"\n\n[workspace]\n"
    )
}

fn lock(name: &str, bytes_version: &str) -> String {
    format!(
        "version = 4\n\n[[package]]\nname = \"bytes\"\nversion = \"{bytes_version}\"\n\
         source = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
         [[package]]\nname = \"{name}\"\nversion = \"0.1.0\"\n"
    )
}

/// A fake repository whose checks all pass: two chapters, their pages and
/// the generated diffs.
struct Fake {
    dir: TempDir,
}

impl Fake {
    fn new() -> Fake {
        let fake = Fake {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let serde = r#"{ version = "1.0", features = ["derive"] }"#;
        fake.write(
            "chapters/01-a/Cargo.toml",
            &manifest("kv-01-a", "\"1.0\"", serde),
        );
        fake.write("chapters/01-a/Cargo.lock", &lock("kv-01-a", "1.0.0"));
        fake.write("chapters/01-a/src/lib.rs", LIB_01);
        fake.write("chapters/01-a/notes.txt", "old notes\n");
        fake.write(
            "chapters/02-b/Cargo.toml",
            &manifest("kv-02-b", "\"1.0\"", serde),
        );
        fake.write("chapters/02-b/Cargo.lock", &lock("kv-02-b", "1.0.0"));
        fake.write("chapters/02-b/src/lib.rs", LIB_02);
        fake.write("chapters/02-b/src/extra.rs", EXTRA_02);
        fake.write("book/src/SUMMARY.md", "# Summary\n");
        fake.write(
            "book/src/01-a.md",
            "# Chapter one\n\n{{#include ../../chapters/01-a/src/lib.rs:greet}}\n",
        );
        fake.write("book/src/02-b.md", PAGE_02);
        diff::generate(&fake.repo()).expect("gen-diffs");
        fake
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).expect("read")
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1));
    }

    fn repo(&self) -> Repo {
        Repo::at(self.root()).expect("repo")
    }

    /// Runs checks; returns (passed, output lines).
    fn check(&self, which: &[Check]) -> (bool, Vec<String>) {
        let mut out = Vec::new();
        let ok = checks::run(&self.repo(), which, &mut out).expect("checks run");
        let text = String::from_utf8(out).expect("utf-8");
        (ok, text.lines().map(str::to_string).collect())
    }

    /// Asserts that `check` fails with exactly the problem lines `expected`.
    fn assert_fails(&self, check: Check, expected: &[&str]) {
        let (ok, lines) = self.check(&[check]);
        assert!(!ok, "{} passed: {lines:#?}", check.name());
        let problems: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("FAILED: ") && !l.starts_with("hint: "))
            .collect();
        assert_eq!(problems, expected);
        let n = expected.len();
        let plural = if n == 1 { "" } else { "s" };
        let last = format!("FAILED: {} ({n} problem{plural})", check.name());
        assert_eq!(lines.last(), Some(&last));
    }

    fn assert_passes(&self, check: Check) {
        let (ok, lines) = self.check(&[check]);
        assert!(ok, "{} failed: {lines:#?}", check.name());
        assert_eq!(lines, [format!("ok: {}", check.name())]);
    }
}

// ---- diff format -------------------------------------------------------

#[test]
fn diff_of_a_modified_file() {
    let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
    let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\n";
    let d = diff_file("src/x.rs", Some(old.as_bytes()), Some(new.as_bytes())).expect("differs");
    assert_eq!(
        d.text,
        "--- a/src/x.rs\n+++ b/src/x.rs\n@@ -2,7 +2,8 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n+i\n"
    );
    assert_eq!((d.added, d.removed, d.binary), (2, 1, false));
    assert_eq!(d.change, diff::Change::Modified);
}

#[test]
fn diff_of_an_added_and_a_removed_file() {
    let added = diff_file("new.rs", None, Some(b"one\ntwo\n")).expect("added");
    assert_eq!(
        added.text,
        "--- /dev/null\n+++ b/new.rs\n@@ -0,0 +1,2 @@\n+one\n+two\n"
    );
    assert_eq!(added.change, diff::Change::Added);
    let removed = diff_file("old.rs", Some(b"gone\n"), None).expect("removed");
    assert_eq!(
        removed.text,
        "--- a/old.rs\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n"
    );
    assert_eq!(removed.change, diff::Change::Removed);
    let empty = diff_file("mod.rs", None, Some(b"")).expect("added empty");
    assert_eq!(empty.text, "--- /dev/null\n+++ b/mod.rs\n");
}

#[test]
fn diff_of_binary_files_and_equal_files() {
    let both = diff_file("img.bin", Some(b"\xff\x00"), Some(b"\xfe")).expect("differs");
    assert_eq!(both.text, "Binary files a/img.bin and b/img.bin differ\n");
    assert!(both.binary);
    let added = diff_file("img.bin", None, Some(b"\xff")).expect("added");
    assert_eq!(added.text, "Binary files /dev/null and b/img.bin differ\n");
    assert_eq!(diff_file("same.rs", Some(b"x\n"), Some(b"x\n")), None);
}

#[test]
fn diff_of_a_file_without_final_newline() {
    let d = diff_file("x", Some(b"a\n"), Some(b"a\nb")).expect("differs");
    assert_eq!(
        d.text,
        "--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n a\n+b\n\\ No newline at end of file\n"
    );
}

#[test]
fn diff_dirs_skips_ignored_target_and_lock_files_in_path_order() {
    let fake = Fake::new();
    fake.write(".gitignore", "*.bak\n/chapters/02-b/local.txt\n");
    fake.write("chapters/02-b/.gitignore", "secret/\n");
    for rel in [
        "x.bak",
        "local.txt",
        "secret/key",
        "target/debug/out",
        "sub/Cargo.lock",
    ] {
        fake.write(&format!("chapters/02-b/{rel}"), "noise\n");
    }
    fake.write("chapters/02-b/Cargo.lock", "changed\n");
    let repo = fake.repo();
    let diffs = diff::diff_dirs(
        &repo.chapter("1").expect("01").dir,
        &repo.chapter("02-b").expect("02").dir,
        diff::Lines::All,
    )
    .expect("diff");
    let paths: Vec<&str> = diffs.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".gitignore",
            "Cargo.toml",
            "notes.txt",
            "src/extra.rs",
            "src/lib.rs"
        ]
    );
    let text = diff::render(&diffs);
    assert!(text.starts_with(
        "--- /dev/null\n+++ b/.gitignore\n@@ -0,0 +1 @@\n+secret/\n--- a/Cargo.toml\n"
    ));
    assert!(text.contains("--- a/notes.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-old notes\n--- /dev/null\n+++ b/src/extra.rs\n"));
}

/// Counts leave out anchor lines, as the book's diffs do.
#[test]
fn summary_is_aligned_and_sorted() {
    let fake = Fake::new();
    assert_eq!(
        fake.read("book/src/diffs/02/summary.txt"),
        "  modified  Cargo.toml    (+1 -1)\n\
         \x20 removed   notes.txt     (-1)\n\
         \x20 added     src/extra.rs  (+1)\n\
         \x20 modified  src/lib.rs    (+3 -3)\n"
    );
    let lib = fake.read("book/src/diffs/02/src/lib.rs.diff");
    assert!(lib.starts_with("--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,9 +1,9 @@\n-//! Chapter one.\n+//! Chapter two.\n"));
}

#[test]
fn chapters_are_found_by_number_or_name() {
    let fake = Fake::new();
    let repo = fake.repo();
    for id in ["2", "02", "02-b", "chapters/02-b/"] {
        assert_eq!(repo.chapter(id).expect(id).name, "02-b");
    }
    let err = repo.chapter("3").expect_err("no chapter 3").to_string();
    assert_eq!(err, "no chapter \"3\"; chapters are: 01-a, 02-b");
    assert!(repo.chapter("b").is_err());
}

#[test]
fn the_command_line_diff_and_check() {
    let fake = Fake::new();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_repo-tools"))
            .arg("--root")
            .arg(fake.root())
            .args(args)
            .output()
            .expect("run repo-tools")
    };
    let out = run(&["diff", "01", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.starts_with("--- a/Cargo.toml\n+++ b/Cargo.toml\n@@ -1,5 +1,5 @@\n [package]\n-name = \"kv-01-a\"\n+name = \"kv-02-b\"\n"));

    // Without --root the root is found above the current directory; a
    // relative --root works too.
    let bin = env!("CARGO_BIN_EXE_repo-tools");
    let found = Command::new(bin)
        .args(["check-includes"])
        .current_dir(fake.path("chapters/02-b/src"))
        .output()
        .expect("run repo-tools");
    assert_eq!(
        String::from_utf8_lossy(&found.stdout),
        "ok: check-includes\n"
    );
    let relative = Command::new(bin)
        .args(["--root", "..", "check-includes"])
        .current_dir(fake.path("chapters"))
        .output()
        .expect("run repo-tools");
    assert_eq!(
        String::from_utf8_lossy(&relative.stdout),
        "ok: check-includes\n"
    );

    let out = run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    fake.write("chapters/02-b/src/extra.rs", "changed\n");
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.contains("book/src/diffs/02/src/extra.rs.diff: stale: differs from the chapters\n")
    );

    let out = run(&["diff", "1", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no chapter \"9\""));
}

// ---- the good tree -----------------------------------------------------

#[test]
fn a_good_tree_passes_every_check() {
    let fake = Fake::new();
    let (ok, lines) = fake.check(&Check::ALL);
    assert!(ok, "{lines:#?}");
    assert_eq!(
        lines,
        [
            "ok: check-diffs",
            "ok: check-includes",
            "ok: check-pages",
            "ok: check-coverage",
            "ok: check-listings",
            "ok: check-length",
            "ok: check-lockstep"
        ]
    );
}

// ---- check-diffs ---------------------------------------------------------

#[test]
fn gen_diffs_removes_stale_files_and_is_idempotent() {
    let fake = Fake::new();
    fake.write("book/src/diffs/02/old/gone.rs.diff", "stale\n");
    fake.write("book/src/diffs/07/summary.txt", "stale\n");
    let stats = diff::generate(&fake.repo()).expect("gen-diffs");
    assert_eq!((stats.written, stats.unchanged, stats.removed), (0, 5, 2));
    assert!(!fake.path("book/src/diffs/07").exists());
    assert!(!fake.path("book/src/diffs/02/old").exists());
    fake.assert_passes(Check::Diffs);
}

#[test]
fn check_diffs_reports_stale_extra_and_missing_files() {
    let fake = Fake::new();
    fake.edit(
        "chapters/02-b/src/lib.rs",
        "greet().repeat(2)",
        "greet().repeat(2)\n    // twice",
    );
    fake.write("book/src/diffs/02/src/other.rs.diff", "extra\n");
    fs::remove_file(fake.path("book/src/diffs/02/notes.txt.diff")).expect("rm");
    fake.assert_fails(
        Check::Diffs,
        &[
            "book/src/diffs/02/notes.txt.diff: missing generated diff",
            "book/src/diffs/02/src/lib.rs.diff: stale: differs from the chapters",
            "book/src/diffs/02/summary.txt: stale: differs from the chapters",
            "book/src/diffs/02/src/other.rs.diff: extra file: no such change",
        ],
    );
    let (_, lines) = fake.check(&[Check::Diffs]);
    assert!(
        lines.contains(&"hint: run scripts/gen-diffs to regenerate book/src/diffs/".to_string())
    );
}

// ---- check-includes -------------------------------------------------------

#[test]
fn check_includes_reports_missing_files_and_anchors() {
    let fake = Fake::new();
    fake.write(
        "book/src/extra/broken.md",
        "# Broken\n\n\
         {{#include ../../../chapters/02-b/src/nope.rs}}\n\
         {{#include ../../../chapters/02-b/src/lib.rs:nope}}\n\
         {{#include ../../../chapters/02-b/src/lib.rs:greet_a}}\n\
         {{#rustdoc_include ../../../chapters/02-b/src/lib.rs:14:99}}\n\
         {{#include ../../../chapters/02-b/src/lib.rs::5}}\n\
         \\{{#include ../../../escaped/is/fine.rs}}\n",
    );
    fake.assert_fails(
        Check::Includes,
        &[
            "book/src/extra/broken.md:3: {{#include ../../../chapters/02-b/src/nope.rs}}: no such file chapters/02-b/src/nope.rs",
            "book/src/extra/broken.md:4: {{#include ../../../chapters/02-b/src/lib.rs:nope}}: no line `ANCHOR: nope` in chapters/02-b/src/lib.rs",
            "book/src/extra/broken.md:5: {{#include ../../../chapters/02-b/src/lib.rs:greet_a}}: no line `ANCHOR: greet_a` in chapters/02-b/src/lib.rs",
            "book/src/extra/broken.md:6: {{#rustdoc_include ../../../chapters/02-b/src/lib.rs:14:99}}: line 99 is past the end of chapters/02-b/src/lib.rs (13 lines)",
        ],
    );
}

#[test]
fn an_anchor_that_is_only_a_prefix_does_not_count() {
    let fake = Fake::new();
    // `greet_all` must not satisfy an include of anchor `greet`.
    fake.edit("chapters/02-b/src/lib.rs", "// ANCHOR: greet\n", "");
    fake.edit("chapters/02-b/src/lib.rs", "// ANCHOR_END: greet\n", "");
    diff::generate(&fake.repo()).expect("gen-diffs");
    fake.write(
        "book/src/x.md",
        "{{#include ../../chapters/02-b/src/lib.rs:greet}}\n",
    );
    fake.assert_fails(
        Check::Includes,
        &["book/src/x.md:1: {{#include ../../chapters/02-b/src/lib.rs:greet}}: no line `ANCHOR: greet` in chapters/02-b/src/lib.rs"],
    );
}

#[test]
fn check_includes_reports_unpaired_chapter_anchors() {
    let fake = Fake::new();
    fake.edit(
        "chapters/01-a/src/lib.rs",
        "// ANCHOR_END: greet\n",
        "// ANCHOR_END: greeting\n",
    );
    fake.edit("book/src/01-a.md", ":greet}}", "}}");
    fake.assert_fails(
        Check::Includes,
        &[
            "chapters/01-a/src/lib.rs:7: `ANCHOR_END: greeting` without an `ANCHOR: greeting` before it",
            "chapters/01-a/src/lib.rs:3: `ANCHOR: greet` without an `ANCHOR_END: greet` after it",
        ],
    );
}

#[test]
fn chapter_anchors_in_ignored_files_are_not_checked() {
    let fake = Fake::new();
    fake.write("chapters/01-a/target/gen.rs", "// ANCHOR: lost\n");
    fake.write(".gitignore", "*.orig\n");
    fake.write("chapters/01-a/src/lib.rs.orig", "// ANCHOR: lost\n");
    fake.assert_passes(Check::Includes);
    fake.write("chapters/01-a/src/kept.rs", "// ANCHOR: lost\n");
    fake.assert_fails(
        Check::Includes,
        &["chapters/01-a/src/kept.rs:1: `ANCHOR: lost` without an `ANCHOR_END: lost` after it"],
    );
}

#[test]
fn links_are_parsed_like_mdbook() {
    let text = "a {{#include x.rs}} b {{ #include y.rs:name }}\n\
                {{#include z.rs:2}} {{#include z.rs:2:}} {{#include z.rs::4}} {{#include z.rs:2:4}}\n\
                \\{{#include esc.rs}} {{#include also_escaped.rs}}\n\
                {{#title T}} {{#playground p.rs}} {{#include w.rs:3:x}}\n";
    let links = find_links(text);
    let got: Vec<(usize, &str, &Part)> = links
        .iter()
        .map(|l| (l.line, l.path.as_str(), &l.part))
        .collect();
    let lines = |start, end| Part::Lines {
        start,
        end,
        bad_end: None,
    };
    assert_eq!(
        got,
        [
            (1, "x.rs", &Part::Whole),
            (1, "y.rs", &Part::Anchor("name".into())),
            (2, "z.rs", &lines(Some(2), Some(2))),
            (2, "z.rs", &lines(Some(2), None)),
            (2, "z.rs", &lines(None, Some(4))),
            (2, "z.rs", &lines(Some(2), Some(4))),
            (
                4,
                "w.rs",
                &Part::Lines {
                    start: Some(3),
                    end: None,
                    bad_end: Some("x".into())
                }
            ),
        ]
    );
    assert_eq!(links[1].text, "{{ #include y.rs:name }}");
}

// ---- check-pages ----------------------------------------------------------

#[test]
fn check_pages_reports_a_changed_file_the_page_never_shows() {
    let fake = Fake::new();
    fake.edit(
        "book/src/02-b.md",
        "{{#include diffs/02/src/lib.rs.diff}}",
        "",
    );
    fake.edit(
        "book/src/02-b.md",
        "{{#include ../../chapters/02-b/src/extra.rs:extra}}",
        "",
    );
    fake.assert_fails(
        Check::Pages,
        &[
            "book/src/02-b.md: never shows src/extra.rs (added): add {{#include diffs/02/src/extra.rs.diff}} or include ../../chapters/02-b/src/extra.rs",
            "book/src/02-b.md: never shows src/lib.rs (modified): add {{#include diffs/02/src/lib.rs.diff}}",
        ],
    );
}

#[test]
fn check_pages_takes_a_removed_file_named_on_the_page() {
    let fake = Fake::new();
    fake.edit(
        "book/src/02-b.md",
        "{{#include diffs/02/notes.txt.diff}}",
        "",
    );
    fake.assert_fails(
        Check::Pages,
        &["book/src/02-b.md: never shows notes.txt (removed): add {{#include diffs/02/notes.txt.diff}}"],
    );
    fake.write(
        "book/src/02-b.md",
        &format!("{}\n`notes.txt` is gone.\n", fake.read("book/src/02-b.md")),
    );
    fake.assert_passes(Check::Pages);
}

#[test]
fn check_pages_counts_the_diff_of_an_added_file_and_any_range() {
    let fake = Fake::new();
    fake.edit(
        "book/src/02-b.md",
        "{{#include ../../chapters/02-b/src/extra.rs:extra}}",
        "{{#include diffs/02/src/extra.rs.diff:3:}}",
    );
    fake.assert_passes(Check::Pages);
}

#[test]
fn check_pages_counts_what_the_chapters_other_pages_show() {
    let fake = Fake::new();
    let extra = "{{#include ../../chapters/02-b/src/extra.rs:extra}}";
    fake.edit("book/src/02-b.md", extra, "");
    // A second page of chapter 02 shows it; a page of chapter 01 would not.
    fake.write("book/src/01-a-notes.md", &format!("{extra}\n"));
    fake.assert_fails(
        Check::Pages,
        &["book/src/02-b.md: never shows src/extra.rs (added): add {{#include diffs/02/src/extra.rs.diff}} or include ../../chapters/02-b/src/extra.rs"],
    );
    fake.write(
        "book/src/02-interlude.md",
        &format!("# Interlude\n\n{extra}\n"),
    );
    fake.assert_passes(Check::Pages);
}

#[test]
fn check_pages_reports_missing_pages() {
    let fake = Fake::new();
    fs::remove_file(fake.path("book/src/01-a.md")).expect("rm");
    fs::remove_file(fake.path("book/src/02-b.md")).expect("rm");
    fake.assert_fails(
        Check::Pages,
        &[
            "book/src/01-a.md: missing page of the first chapter",
            "book/src/02-b.md: missing page of the chapter",
        ],
    );
}

// ---- check-lockstep -------------------------------------------------------

#[test]
fn check_lockstep_reports_cargo_lock_versions() {
    let fake = Fake::new();
    fake.write("chapters/02-b/Cargo.lock", &lock("kv-02-b", "1.1.0"));
    fake.assert_fails(
        Check::Lockstep,
        &["chapters/02-b/Cargo.lock:4: `bytes` 1.x is locked at 1.1.0 here but at 1.0.0 in 01-a"],
    );
}

#[test]
fn check_lockstep_reports_the_root_lock_too() {
    let fake = Fake::new();
    fake.write("Cargo.lock", &lock("kvbench", "1.1.0"));
    fake.assert_fails(
        Check::Lockstep,
        &["Cargo.lock:4: `bytes` 1.x is locked at 1.1.0 here but at 1.0.0 in 01-a"],
    );
    fake.write("Cargo.lock", &lock("kvbench", "1.0.0"));
    fake.assert_passes(Check::Lockstep);
}

#[test]
fn check_lockstep_lets_a_chapter_add_another_semver_line() {
    let fake = Fake::new();
    // 02-b keeps bytes 1.0.0 and adds an old 0.5 line, as a new dependency
    // can; only a different 1.x version would compile twice.
    let extra = "\n[[package]]\nname = \"bytes\"\nversion = \"0.5.6\"\n\
                 source = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
    fake.write(
        "chapters/02-b/Cargo.lock",
        &(lock("kv-02-b", "1.0.0") + extra),
    );
    fake.assert_passes(Check::Lockstep);
}

#[test]
fn check_lockstep_reports_cargo_toml_specs() {
    let fake = Fake::new();
    fake.edit(
        "chapters/02-b/Cargo.toml",
        "bytes = \"1.0\"",
        "bytes = \"1.1\"",
    );
    fake.edit(
        "chapters/02-b/Cargo.toml",
        "features = [\"derive\"]",
        "features = [\"rc\"]",
    );
    fake.assert_fails(
        Check::Lockstep,
        &[
            "chapters/02-b/Cargo.toml:7: `bytes` has version \"1.1\" here but \"1.0\" in chapters/01-a/Cargo.toml",
            "chapters/02-b/Cargo.toml:8: [dependencies] `serde` has features = [\"rc\"], default-features = true, optional = false here but features = [\"derive\"], default-features = true, optional = false in chapters/01-a/Cargo.toml: a later chapter may add features, but not drop any or change the others",
        ],
    );
}

#[test]
fn check_lockstep_lets_a_later_chapter_add_features() {
    let fake = Fake::new();
    fake.edit(
        "chapters/02-b/Cargo.toml",
        "features = [\"derive\"]",
        "features = [\"derive\", \"rc\"]",
    );
    fake.assert_passes(Check::Lockstep);
}

#[test]
fn check_lockstep_compares_default_features_and_skips_own_packages() {
    let fake = Fake::new();
    let serde = r#"{ version = "1.0", features = ["derive"], default-features = false }"#;
    fake.write(
        "chapters/02-b/Cargo.toml",
        &manifest("kv-02-b", "{ version = \"1.0\" }", serde),
    );
    // The chapters' own packages differ in name and version: not compared.
    fake.write(
        "chapters/02-b/Cargo.lock",
        &lock("kv-01-a", "1.0.0").replace("0.1.0", "0.2.0"),
    );
    fake.assert_fails(
        Check::Lockstep,
        &["chapters/02-b/Cargo.toml:8: [dependencies] `serde` has features = [\"derive\"], default-features = false, optional = false here but features = [\"derive\"], default-features = true, optional = false in chapters/01-a/Cargo.toml: a later chapter may add features, but not drop any or change the others"],
    );
}

#[test]
fn book_diffs_leave_out_anchor_lines_but_the_diff_command_keeps_them() {
    let fake = Fake::new();
    let repo = fake.repo();
    let (one, two) = (
        repo.chapter("1").expect("01"),
        repo.chapter("2").expect("02"),
    );

    let all = diff::render(&diff::diff_dirs(&one.dir, &two.dir, diff::Lines::All).expect("diff"));
    assert!(all.contains("+// ANCHOR: greet_all\n"), "{all}");

    let book = diff::chapter_diffs(&repo).expect("diffs");
    let lib = book[0]
        .files
        .iter()
        .find(|f| f.path == "src/lib.rs")
        .expect("lib.rs");
    assert!(!lib.text.contains("ANCHOR"), "{}", lib.text);
    assert!(
        lib.text.contains("+pub fn greet_all() -> String {\n"),
        "{}",
        lib.text
    );

    // A file whose only change is an anchor has no book diff at all.
    fake.write(
        "chapters/02-b/src/lib.rs",
        &LIB_01
            .replace("// ANCHOR: greet\n", "// ANCHOR: hi\n")
            .replace("// ANCHOR_END: greet\n", "// ANCHOR_END: hi\n"),
    );
    let book = diff::chapter_diffs(&fake.repo()).expect("diffs");
    assert!(book[0].files.iter().all(|f| f.path != "src/lib.rs"));
    let stripped = diff::strip_anchor_lines(b"a\n// ANCHOR: x\nb\n// ANCHOR_END: x\n".to_vec());
    assert_eq!(stripped, b"a\nb\n");
}

// ---- check-coverage ---------------------------------------------------------

#[test]
fn changed_lines_leave_out_blank_lines_and_anchor_markers() {
    use repo_tools::coverage::changed_lines;
    let old = "a\nb\n";
    let new = "a\n// ANCHOR: x\nc\n\nb\n// ANCHOR_END: x\nd\n";
    assert_eq!(changed_lines(old, new), [3, 7]);
    assert_eq!(changed_lines("", "x\n\ny\n"), [1, 3]);
    assert!(changed_lines(old, "a\n// ANCHOR: y\nb\n").is_empty());
}

#[test]
fn included_lines_follow_anchors_and_ranges() {
    use repo_tools::coverage::included_lines;
    let text = "one\n// ANCHOR: a\ntwo\n// ANCHOR_END: a\nthree\n";
    let lines = |part| included_lines(text, &part).into_iter().collect::<Vec<_>>();
    assert_eq!(lines(Part::Anchor("a".into())), [3]);
    assert_eq!(lines(Part::Whole), [1, 2, 3, 4, 5]);
    let range = Part::Lines {
        start: Some(4),
        end: None,
        bad_end: None,
    };
    assert_eq!(lines(range), [4, 5]);
}

#[test]
fn check_coverage_fails_below_the_threshold_and_names_the_lines() {
    let fake = Fake::new();
    // Only `greet_all` of the changed lines of lib.rs is still shown.
    fake.edit(
        "book/src/02-b.md",
        "{{#include diffs/02/src/lib.rs.diff}}",
        "",
    );
    let (ok, lines) = fake.check(&[Check::Coverage]);
    assert!(!ok, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("book/src/02-b.md: shows ")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"chapters/02-b/src/lib.rs: lines not shown: 1".to_string()),
        "{lines:#?}"
    );
    let report = repo_tools::coverage::report(
        &repo_tools::coverage::compute(&fake.repo(), &diff::chapter_diffs(&fake.repo()).unwrap())
            .unwrap(),
    );
    assert!(report.contains("src/lib.rs: lines 1"), "{report}");

    // Listed as not shown, with a reason, the file no longer counts.
    fake.write(
        "book/not-shown.toml",
        "[[file]]\nchapter = \"02-b\"\npath = \"src/lib.rs\"\nreason = \"a test\"\n",
    );
    fake.assert_passes(Check::Coverage);
}

#[test]
fn an_entry_of_not_shown_needs_a_reason() {
    let fake = Fake::new();
    fake.write(
        "book/not-shown.toml",
        "[[file]]\nchapter = \"02-b\"\npath = \"src/lib.rs\"\n",
    );
    let err = checks::run(&fake.repo(), &[Check::Coverage], &mut Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("an entry has no `reason`"),
        "{err}"
    );
}

// ---- check-listings ---------------------------------------------------------

#[test]
fn check_listings_wants_the_file_named_before_each_listing() {
    let fake = Fake::new();
    fake.write(
        "book/src/02-b.md",
        &format!(
            "{PAGE_02}\nSome code:\n\n```rust\n{{{{#include ../../chapters/02-b/src/extra.rs:extra}}}}\n```\n"
        ),
    );
    let line = PAGE_02.lines().count() + 5;
    fake.assert_fails(
        Check::Listings,
        &[&format!(
            "book/src/02-b.md:{line}: {{{{#include ../../chapters/02-b/src/extra.rs:extra}}}}: the paragraph before this listing does not name `src/extra.rs`"
        )],
    );
    fake.edit("book/src/02-b.md", "Some code:", "In `src/extra.rs`:");
    fake.assert_passes(Check::Listings);
}

// ---- check-length -----------------------------------------------------------

#[test]
fn check_length_fails_past_the_limit_unless_the_listing_is_folded() {
    let fake = Fake::new();
    let long: String = (0..1001).map(|i| format!("line {i}\n")).collect();
    fake.write("chapters/02-b/long.txt", &long);
    let listing = "In `long.txt`:\n\n```text\n{{#include ../../chapters/02-b/long.txt}}\n```\n";
    fake.write("book/src/02-b.md", &format!("{PAGE_02}\n{listing}"));
    fake.assert_fails(
        Check::Length,
        &["book/src/02-b.md: shows 1001 listing lines, more than 1000: fold reference listings in <details>, or split the page"],
    );
    let folded = format!("<details><summary>long</summary>\n\n{listing}\n</details>\n");
    fake.write("book/src/02-b.md", &format!("{PAGE_02}\n{folded}"));
    fake.assert_passes(Check::Length);
}
