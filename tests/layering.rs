//! The library's modules import each other in one direction only: no import cycle, and no
//! city actor importing another actor's module (ARCHITECTURE.md, "Module layers").
//!
//! This reads the sources under `src/` the way a reviewer would: each file is a module
//! (`a/b.rs` and `a/b/mod.rs` are `crate::a::b`); every path it names (`use` items and
//! inline `crate::…` / `super::…` paths) is resolved to the module that *defines* the named
//! item, following `pub use` re-exports, and becomes an edge. Unit tests (the
//! `#[cfg(test)]` part at the end of a file, and `src/testkit.rs`) are left out: test code
//! may reach across layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

struct Source {
    module: Module,
    /// The file's code without comments, string literals or its unit tests.
    code: String,
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Drops comments, string and char literals, and unit tests: a top-level `#[cfg(test)]`
/// item of one line (`mod tests;`) is skipped, and one that opens a block (`mod tests {`)
/// ends the code of the file.
fn strip(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = String::with_capacity(text.len());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("#[cfg(test)]") {
            let next = lines.get(i + 1).map_or("", |l| l.trim_end());
            if next.ends_with('{') {
                break;
            }
            if next.ends_with(';') {
                i += 2;
                continue;
            }
        }
        kept.push_str(lines[i]);
        kept.push('\n');
        i += 1;
    }
    let code = kept.as_str();
    let mut out = String::with_capacity(code.len());
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            'r' if chars.peek() == Some(&'#') || chars.peek() == Some(&'"') => {
                // A raw string r"…" or r#"…"#, or an identifier starting with r.
                let mut hashes = 0;
                let mut look = chars.clone();
                while look.peek() == Some(&'#') {
                    look.next();
                    hashes += 1;
                }
                if look.peek() == Some(&'"') {
                    look.next();
                    let end: String = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    let rest: String = look.clone().collect();
                    let skip = rest.find(&end).map_or(rest.len(), |i| i + end.len());
                    chars = look;
                    for _ in 0..rest[..skip].chars().count() {
                        chars.next();
                    }
                    out.push_str("\"\"");
                } else {
                    out.push(c);
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            '\'' => {
                // A char literal ('a', '\n'), or a lifetime ('a) which we keep.
                let mut look = chars.clone();
                let first = look.next();
                let second = look.next();
                if first == Some('\\') || second == Some('\'') {
                    while let Some(c) = chars.next() {
                        if c == '\\' {
                            chars.next();
                        } else if c == '\'' {
                            break;
                        }
                    }
                    out.push_str("' '");
                } else {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn ident_at(s: &str, at: usize) -> &str {
    let end = s[at..]
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(s.len(), |i| at + i);
    &s[at..end]
}

/// Names of the items a module defines (any visibility) and its child modules.
fn definitions(code: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut items = BTreeSet::new();
    let mut mods = BTreeSet::new();
    for line in code.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '(' || c == '<' || c == ':' || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        for (i, w) in words.iter().enumerate() {
            let kind = *w;
            if !matches!(
                kind,
                "struct" | "enum" | "trait" | "type" | "fn" | "const" | "static" | "mod" | "union"
            ) {
                continue;
            }
            // Only item keywords in item position: at the start or after modifiers.
            let before_ok = words[..i].iter().all(|b| {
                b.starts_with("pub")
                    || matches!(*b, "async" | "unsafe" | "crate)" | "super)" | "extern")
            });
            if !before_ok {
                continue;
            }
            if let Some(name) = words.get(i + 1) {
                let name = ident_at(name, 0).to_string();
                if name.is_empty() {
                    continue;
                }
                if kind == "mod" {
                    mods.insert(name.clone());
                }
                items.insert(name);
            }
            break;
        }
    }
    (items, mods)
}

/// Every `use` tree of the file, flattened to paths (`a::b::{c, d::e}` → `a::b::c`,
/// `a::b::d::e`), with whether it was `pub use`.
fn use_paths(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let prefix = before[line_start..].trim();
        let is_item = prefix.is_empty() || prefix.starts_with("pub");
        let boundary = at == 0
            || !rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let end = rest[at..].find(';').map_or(rest.len(), |i| at + i);
        if is_item && boundary {
            // `a as b` keeps the path `a`: mark the rename before dropping whitespace.
            let tree: String = rest[at + 4..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace(" as ", "@")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            for path in expand(&tree) {
                let segments: Vec<String> = path
                    .split("::")
                    .map(|s| s.to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                out.push((prefix.starts_with("pub"), segments));
            }
        }
        rest = &rest[end.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    out
}

fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        let t = tree.split('@').next().unwrap_or(tree);
        return vec![t.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |e| {
                if e == "self" {
                    prefix.trim_end_matches("::").to_string()
                } else {
                    format!("{prefix}{e}")
                }
            })
        })
        .collect()
}

/// Inline paths `crate::a::b`, `super::a` and `child::a` (for each child module of the
/// file) outside `use` items.
fn inline_paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let roots = ["crate::".to_string(), "super::".to_string()]
        .into_iter()
        .chain(children.iter().map(|c| format!("{c}::")));
    for root in roots {
        let root = root.as_str();
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            let boundary = at == 0
                || !code[..at]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let mut segments = vec![root.trim_end_matches("::").to_string()];
            let mut pos = at + root.len();
            loop {
                let id = ident_at(code, pos);
                if id.is_empty() {
                    break;
                }
                segments.push(id.to_string());
                pos += id.len();
                if code[pos..].starts_with("::") {
                    pos += 2;
                } else {
                    break;
                }
            }
            if boundary && segments.len() > 1 {
                out.push(segments);
            }
            from = pos.max(at + 1);
        }
    }
    out
}

struct Crate {
    sources: Vec<Source>,
    items: BTreeMap<Module, BTreeSet<String>>,
    children: BTreeMap<Module, BTreeSet<String>>,
    reexports: BTreeMap<Module, Vec<Vec<String>>>,
}

impl Crate {
    fn load(src: &Path) -> Self {
        let mut files = Vec::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut krate = Crate {
            sources: Vec::new(),
            items: BTreeMap::new(),
            children: BTreeMap::new(),
            reexports: BTreeMap::new(),
        };
        for file in files {
            let module = module_of(src, &file);
            if module == ["main"] || module == ["testkit"] {
                continue;
            }
            let code = strip(&std::fs::read_to_string(&file).unwrap());
            let (items, mods) = definitions(&code);
            let absolute: Vec<Vec<String>> = use_paths(&code)
                .into_iter()
                .filter(|(public, _)| *public)
                .map(|(_, p)| absolutize(&module, &mods, &p))
                .collect();
            krate.items.insert(module.clone(), items);
            krate.children.insert(module.clone(), mods);
            krate.reexports.insert(module.clone(), absolute);
            krate.sources.push(Source { module, code });
        }
        krate
    }

    /// The module that defines what `path` (absolute, without `crate`) names.
    fn resolve(&self, path: &[String], depth: usize) -> Option<Module> {
        let mut module: Module = Vec::new();
        for (i, seg) in path.iter().enumerate() {
            let is_child = self.children.get(&module).is_some_and(|c| c.contains(seg))
                && self
                    .items
                    .contains_key(&[module.clone(), vec![seg.clone()]].concat());
            if is_child {
                module.push(seg.clone());
                continue;
            }
            if seg == "*" || self.items.get(&module).is_some_and(|d| d.contains(seg)) {
                return Some(module);
            }
            if depth < 8 {
                for re in self.reexports.get(&module).into_iter().flatten() {
                    let last = re.last().map(String::as_str);
                    if last == Some(seg.as_str()) {
                        let mut target = re.clone();
                        target.extend(path[i + 1..].iter().cloned());
                        return self.resolve(&target, depth + 1);
                    }
                    if last == Some("*") {
                        let mut target = re[..re.len() - 1].to_vec();
                        target.extend(path[i..].iter().cloned());
                        if let Some(m) = self.resolve(&target, depth + 1)
                            && self.items.get(&m).is_some_and(|d| d.contains(seg))
                        {
                            return Some(m);
                        }
                    }
                }
            }
            // An external or unknown name: the edge goes to the module it was reached in.
            return (!module.is_empty()).then_some(module);
        }
        (!module.is_empty()).then_some(module)
    }

    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for s in &self.sources {
            let mods = &self.children[&s.module];
            let paths = use_paths(&s.code)
                .into_iter()
                .map(|(_, p)| p)
                .chain(inline_paths(&s.code, mods));
            for p in paths {
                let absolute = absolutize(&s.module, mods, &p);
                if absolute.is_empty() {
                    continue;
                }
                if let Some(target) = self.resolve(&absolute, 0)
                    && target != s.module
                {
                    edges.entry(s.module.clone()).or_default().insert(target);
                }
            }
        }
        edges
    }
}

/// A path as seen from `module` (`crate::…`, `super::…`, `self::…`, or a child module's
/// name), made absolute without the leading `crate`. Paths into other crates come back
/// empty.
fn absolutize(module: &Module, children: &BTreeSet<String>, path: &[String]) -> Vec<String> {
    let Some(first) = path.first() else {
        return vec![];
    };
    match first.as_str() {
        "crate" => path[1..].to_vec(),
        "super" | "self" => {
            let mut base = module.clone();
            let mut rest = path;
            while let Some(seg) = rest.first() {
                match seg.as_str() {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            base
        }
        name if children.contains(name) => {
            let mut base = module.clone();
            base.extend(path.iter().cloned());
            base
        }
        _ => vec![],
    }
}

fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|m| m == node).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.clone(), 1);
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn show(m: &Module) -> String {
    format!("crate::{}", m.join("::"))
}

fn library() -> Crate {
    Crate::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn the_library_has_no_import_cycle() {
    let krate = library();
    assert!(
        krate.sources.len() > 30,
        "read {} modules from src/",
        krate.sources.len()
    );
    let edges = krate.edges();
    if std::env::var_os("LAYERING_DEBUG").is_some() {
        for (from, to) in &edges {
            let to: Vec<String> = to.iter().map(show).collect();
            eprintln!("{} → {}", show(from), to.join(", "));
        }
    }
    // The reader must see the layering that is there, or it proves nothing.
    let has = |from: &str, to: &str| {
        let f: Module = from.split("::").map(String::from).collect();
        let t: Module = to.split("::").map(String::from).collect();
        edges.get(&f).is_some_and(|e| e.contains(&t))
    };
    assert!(has("node", "city"), "node uses the city wing");
    assert!(has("city::actors::intake", "city::msgs"));
    assert!(
        has("messages::pipeline", "messages::batch"),
        "via a re-export"
    );
    // Every cycle, not just the first: break each one found and look again.
    let mut edges = edges;
    let mut cycles = Vec::new();
    while let Some(cycle) = find_cycle(&edges) {
        let (from, to) = (&cycle[cycle.len() - 2], &cycle[cycle.len() - 1]);
        edges.get_mut(from).unwrap().remove(to);
        cycles.push(cycle.iter().map(show).collect::<Vec<_>>().join(" → "));
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn city_actors_import_messages_never_each_other() {
    let krate = library();
    let edges = krate.edges();
    let actors: Vec<&Module> = krate
        .sources
        .iter()
        .map(|s| &s.module)
        .filter(|m| m.len() == 3 && m[0] == "city" && m[1] == "actors")
        .collect();
    assert!(actors.len() >= 7, "{actors:?}");
    for a in &actors {
        for b in &actors {
            assert!(
                a == b || !edges.get(*a).is_some_and(|e| e.contains(*b)),
                "{} imports {}",
                show(a),
                show(b)
            );
        }
    }
}

#[test]
fn the_domain_engines_are_rules_importing_only_settings_vocabulary_and_crypto() {
    let krate = library();
    let edges = krate.edges();
    let engines: Vec<&Module> = krate
        .sources
        .iter()
        .map(|s| &s.module)
        .filter(|m| m.len() == 2 && m[0] == "engines")
        .collect();
    assert_eq!(engines.len(), 4, "{engines:?}");
    let allowed = ["config", "messages", "crypto", "engines"];
    let mut seen = BTreeSet::new();
    for engine in engines {
        for to in edges.get(engine).into_iter().flatten() {
            seen.insert(to[0].clone());
            assert!(
                allowed.contains(&to[0].as_str()),
                "{} imports {}",
                show(engine),
                show(to)
            );
        }
    }
    assert!(
        seen.contains("config") && seen.contains("messages"),
        "{seen:?}"
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut edges = BTreeMap::new();
    let (a, b, c): (Module, Module, Module) =
        (vec!["a".into()], vec!["b".into()], vec!["c".into()]);
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([c.clone()]));
    assert!(find_cycle(&edges).is_none());
    edges.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(find_cycle(&edges), Some(vec![a.clone(), b, c, a]));

    let code = strip(
        "#[cfg(test)]\nmod kit;\nuse crate::x::{y, z::{self, w}, hash as h};\n// crate::q::r\nfn f() { super::t::u(); let s = \"crate::no\"; }\n#[cfg(test)]\nmod tests {\n    use crate::p;\n}",
    );
    assert!(
        !code.contains("kit"),
        "test-only items are left out: {code}"
    );
    let uses: Vec<Vec<String>> = use_paths(&code).into_iter().map(|(_, p)| p).collect();
    let join = |v: &Vec<String>| v.join("::");
    assert_eq!(
        uses.iter().map(join).collect::<Vec<_>>(),
        [
            "crate::x::y",
            "crate::x::z",
            "crate::x::z::w",
            "crate::x::hash"
        ]
    );
    let children = BTreeSet::from(["t".to_string()]);
    let inline: Vec<String> = inline_paths(&code, &children).iter().map(join).collect();
    assert!(inline.contains(&"super::t::u".to_string()), "{inline:?}");
    assert!(
        !inline.iter().any(|p| p.contains("no") || p.contains("q")),
        "{inline:?}"
    );
}
