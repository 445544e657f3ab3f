//! Tooling of the KV server course: diffs between chapters, generated diff
//! files for the book, and checks that the book shows what the chapters do.

pub mod checks;
pub mod coverage;
pub mod diff;
pub mod includes;
pub mod length;
pub mod listings;
pub mod lockstep;
pub mod pages;
pub mod repo;
pub mod report;
