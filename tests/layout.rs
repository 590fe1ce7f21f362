//! The source layout holds to what `src/lib.rs` says of it: the product
//! never imports the tools, no two files of a folder import each other
//! (directly or round a longer circle), and every top-level module is in
//! lib.rs's map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside the crate: `["kafka", "run"]` for `src/kafka/run.rs`.
type ModPath = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src").with_extension("");
    let mut parts: ModPath = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The file's code outside its unit tests, without comments: what the
/// product itself uses. Tests may use the tools (fixtures, generated traffic).
fn product_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `prefix::a::b` path in `code`, as its segments.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut segments = Vec::new();
        let mut s = rest;
        loop {
            let end = s
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(s.len());
            if end == 0 {
                break;
            }
            segments.push(s[..end].to_string());
            if !s[end..].starts_with("::") {
                break;
            }
            s = &s[end + 2..];
        }
        if !segments.is_empty() {
            out.push(segments);
        }
    }
    out
}

/// What each product file imports, as module paths.
fn imports() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = BTreeMap::new();
    for file in files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == "main.rs" || name == "lib.rs" || name == "tests.rs" {
            continue;
        }
        let module = module_of(&src, &file);
        let code = product_code(&std::fs::read_to_string(&file).expect("read"));
        let parent: ModPath = module[..module.len() - 1].to_vec();
        let mut deps: BTreeSet<ModPath> = paths_after(&code, "crate::").into_iter().collect();
        for p in paths_after(&code, "super::") {
            deps.insert(parent.iter().cloned().chain(p).collect());
        }
        graph.insert(module, deps);
    }
    graph
}

/// Circles among the files of one folder: an edge from `a` to `b` when a
/// file under `a` imports something under `b`, both children of `folder`.
fn circles_in(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>, folder: &[String]) -> Vec<Vec<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, deps) in graph {
        if module.len() <= folder.len() || module[..folder.len()] != *folder {
            continue;
        }
        let from = &module[folder.len()];
        for d in deps {
            if d.len() > folder.len() && d[..folder.len()] == *folder && d[folder.len()] != *from {
                edges.entry(from.clone()).or_default().insert(d[folder.len()].clone());
            }
        }
    }
    // A circle is a node that reaches itself; report each once, as the set.
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = edges[start].iter().cloned().collect();
        while let Some(n) = stack.pop() {
            if &n == start {
                let mut members: Vec<String> = edges
                    .keys()
                    .filter(|m| reaches(&edges, start, m) && reaches(&edges, m, start))
                    .cloned()
                    .collect();
                members.sort();
                found.insert(members);
                break;
            }
            if seen.insert(n.clone()) {
                stack.extend(edges.get(&n).into_iter().flatten().cloned());
            }
        }
    }
    found.into_iter().collect()
}

fn reaches(edges: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(n) = stack.pop() {
        for next in edges.get(&n).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn the_product_never_imports_the_tools() {
    let offenders: Vec<String> = imports()
        .into_iter()
        .filter(|(module, _)| module.first().is_none_or(|m| m != "tools"))
        .filter(|(_, deps)| deps.iter().any(|d| d.first().is_some_and(|m| m == "tools")))
        .map(|(module, _)| module.join("::"))
        .collect();
    assert!(
        offenders.is_empty(),
        "product modules importing crate::tools: {offenders:?}"
    );
}

#[test]
fn no_two_files_of_a_folder_import_each_other() {
    let graph = imports();
    let folders: BTreeSet<ModPath> = graph.keys().map(|m| m[..m.len() - 1].to_vec()).collect();
    let mut circles = Vec::new();
    for folder in &folders {
        for circle in circles_in(&graph, folder) {
            circles.push(format!("{}: {}", folder.join("::"), circle.join(" <-> ")));
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_circle_check_finds_a_circle() {
    // The check above passes on an empty graph too; this shows it can fail.
    let m = |p: &str| p.split("::").map(String::from).collect::<ModPath>();
    let graph = BTreeMap::from([
        (m("kafka::run"), BTreeSet::from([m("kafka::topology::plan")])),
        (m("kafka::topology"), BTreeSet::from([m("kafka::run::RunError")])),
        (m("kafka::order"), BTreeSet::from([m("kafka::run")])),
    ]);
    assert_eq!(
        circles_in(&graph, &m("kafka")),
        vec![vec!["run".to_string(), "topology".to_string()]]
    );
}

#[test]
fn lib_rs_maps_every_top_level_module() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).expect("lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    assert!(declared.len() > 10, "lib.rs declares its modules as `pub mod name;`");
    let missing: Vec<&&str> = declared.iter().filter(|m| !lib.contains(&format!("[`{m}`]"))).collect();
    assert!(missing.is_empty(), "modules missing from lib.rs's layout: {missing:?}");
}
