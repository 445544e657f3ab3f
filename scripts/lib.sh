# Shared by the scripts (source it, don't run it): the repository root, the
# pinned mdBook, and a function running repo-tools on this repository.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MDBOOK_VERSION=0.5.4
MDBOOK="$ROOT/.tools/bin/mdbook"

# repo_tools ARGS...: runs the repo-tools crate (built on first use).
repo_tools() {
    # From $ROOT, so that .cargo/config.toml (the shared target/) applies.
    (cd "$ROOT" && cargo run -q --manifest-path "$ROOT/Cargo.toml" -p repo-tools -- --root "$ROOT" "$@")
}

# ensure_mdbook: installs the pinned mdBook into $ROOT/.tools unless it is there.
ensure_mdbook() {
    if [ "$("$MDBOOK" --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
        echo "Installing mdBook $MDBOOK_VERSION into $ROOT/.tools (once, takes a few minutes)" >&2
        # From /, so that the build uses a temporary target directory, not ours.
        (cd / && cargo install --locked --root "$ROOT/.tools" mdbook --version "=$MDBOOK_VERSION")
    fi
}
