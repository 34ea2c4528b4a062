//! The README's code map names every source file under `src/` and `csrc/` in a row of its
//! own, and names no file that does not exist.

use std::collections::BTreeSet;
use std::path::Path;

/// The files in the README's code map: the first column of the table under "## Code map".
fn mapped_files(readme: &str) -> Vec<String> {
    let section = readme.split("## Code map").nth(1).expect("README has a code map");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(file, _)| file.to_string())
        .collect()
}

fn source_files(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            out.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_source_file_has_one_row_in_the_readme_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mapped = mapped_files(&readme);
    let unique: BTreeSet<String> = mapped.iter().cloned().collect();
    assert_eq!(unique.len(), mapped.len(), "a file has more than one row");
    let mut sources = BTreeSet::new();
    source_files(&root.join("src"), &mut sources);
    source_files(&root.join("csrc"), &mut sources);
    let missing: Vec<_> = sources.difference(&unique).collect();
    let stale: Vec<_> = unique.difference(&sources).collect();
    assert!(missing.is_empty(), "files without a row in the README's code map: {missing:?}");
    assert!(stale.is_empty(), "rows for files that do not exist: {stale:?}");
}
