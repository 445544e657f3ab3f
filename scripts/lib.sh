# Shared by the scripts (source it, don't run it): the repository root, the
# pinned mdBook, and a function running repo-tools on this repository.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MDBOOK_VERSION=0.5.4
# The full mdBook (build and serve), and one that can only build, compiled
# without optimisations: it installs in 80 s instead of about 220 s, and
# builds this book in 4 s instead of 1. The test command, run on fresh
# machines, uses it unless the full one is there.
MDBOOK="$ROOT/.tools/bin/mdbook"
MDBOOK_BUILD_ONLY="$ROOT/.tools/build-only/bin/mdbook"

# repo_tools ARGS...: runs the repo-tools crate (built on first use).
repo_tools() {
    # From $ROOT, so that .cargo/config.toml (the shared target/) applies.
    (cd "$ROOT" && cargo run -q --manifest-path "$ROOT/Cargo.toml" -p repo-tools -- --root "$ROOT" "$@")
}

# is_pinned BINARY: whether BINARY is the pinned mdBook.
is_pinned() {
    [ "$("$1" --version 2>/dev/null)" = "mdbook v$MDBOOK_VERSION" ]
}

# install_mdbook ROOT [CARGO_INSTALL_ARGS...]: installs the pinned mdBook
# into ROOT/bin.
install_mdbook() {
    local root="$1"
    shift
    echo "Installing mdBook $MDBOOK_VERSION into $root (once, takes a few minutes)" >&2
    # From /, so that the build uses a temporary target directory, not ours;
    # and without the test command's lint settings, which are for our code.
    (cd / && env -u RUSTFLAGS -u RUSTC_WORKSPACE_WRAPPER \
        cargo install --locked --root "$root" mdbook --version "=$MDBOOK_VERSION" "$@")
}

# ensure_mdbook: installs the full pinned mdBook into $ROOT/.tools unless it
# is there.
ensure_mdbook() {
    is_pinned "$MDBOOK" || install_mdbook "$ROOT/.tools"
}

# ensure_mdbook_build: sets MDBOOK_BUILD to an mdBook that can build the
# book: the full one if it is there, else the build-only one, installed if
# need be.
ensure_mdbook_build() {
    if is_pinned "$MDBOOK"; then
        MDBOOK_BUILD="$MDBOOK"
        return
    fi
    if ! is_pinned "$MDBOOK_BUILD_ONLY"; then
        install_mdbook "$ROOT/.tools/build-only" --debug --no-default-features --features search
    fi
    MDBOOK_BUILD="$MDBOOK_BUILD_ONLY"
}
