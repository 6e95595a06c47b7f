//! The documents stay true to the tree: every file or folder ARCHITECTURE.md names exists.

use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every file and folder of the repository, as `/`-separated paths from its root.
fn tree(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                found.push(format!("{relative}/"));
                pending.push(path);
            } else {
                found.push(relative);
            }
        }
    }
    found
}

/// Backticked names that look like paths: `a/b.rs`, `lua.rs`, `scripts/`. Placeholders
/// (`DIR/...`, `<id>`) and the bare root `/` are not paths of the repository.
fn named_paths(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| {
            let looks_like_a_path = [".rs", ".md", ".sql", ".toml", ".sh", "/"]
                .iter()
                .any(|end| name.ends_with(end));
            looks_like_a_path
                && name.len() > 1
                && !name.contains(char::is_whitespace)
                && !name.contains('<')
                && !name.starts_with(|c: char| c.is_ascii_uppercase())
        })
        .collect()
}

#[test]
fn every_path_architecture_md_names_exists() {
    let root = repository();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let tree = tree(&root);
    let missing: Vec<&str> = named_paths(&text)
        .into_iter()
        .filter(|name| {
            !tree
                .iter()
                .any(|path| path == name || path.ends_with(&format!("/{name}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn the_path_check_sees_a_missing_file() {
    let tree = tree(&repository());
    assert!(tree.iter().any(|path| path == "platform/src/server.rs"));
    assert_eq!(
        named_paths("`server.rs`, `no_such_file.rs`, `DIR/x/`, `a b.rs`, `scripts/`"),
        ["server.rs", "no_such_file.rs", "scripts/"]
    );
    assert!(!tree.iter().any(|path| path.ends_with("/no_such_file.rs")));
}
