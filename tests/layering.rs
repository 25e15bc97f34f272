//! The module layers of ARCHITECTURE.md, checked: a module may use only modules of lower
//! layers (its `crate::` paths outside its tests), so the graph has no loop and the pure
//! layers at the bottom never reach up into the daemon's machinery.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom first. A module may use the modules of the layers below its own.
const LAYERS: &[&[&str]] = &[
    &[
        "assets", "cli", "deflate", "glob", "metrics", "proxy", "systemd", "template",
    ],
    &["config", "logging", "wsframe"],
    &["auth", "outbox", "protocol", "rate"],
    &["audience"],
    &["router"],
    &["history", "hub"],
    &["state"],
    &["inbound", "presence"],
    &["dispatch", "session"],
    &["pubsub"],
    &["http", "reload"],
    &["daemon"],
];

/// Module name → the modules its code (tests left out) uses.
fn uses() -> BTreeMap<String, Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if path.extension().is_none_or(|e| e != "rs") || ["lib", "main", "bin"].contains(&&*module)
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests may use anything; they sit at the end of each file.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let used = uses.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            // `crate::{a::X, b}` names several modules at once.
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap()]
                    .split(',')
                    .map(|path| path.trim().split("::").next().unwrap())
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && !used.contains(&name) {
                    used.push(name);
                }
            }
        }
    }
    uses
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of LAYERS"))
}

#[test]
fn every_module_uses_only_lower_layers() {
    let mut wrong = Vec::new();
    for (module, used) in uses() {
        for name in used {
            if layer_of(&name) >= layer_of(&module) {
                wrong.push(format!("{module} uses {name}"));
            }
        }
    }
    assert!(wrong.is_empty(), "uses against the layering: {wrong:#?}");
}
