//! Turns `keys.toml`, the one table of configuration keys, into `config::KEY_TABLE` (Rust in
//! `OUT_DIR`). A malformed table stops the build with a message that names the entry.

use std::fmt::Write as _;
use std::{env, fs, path::Path};

const SCOPES: [(&str, &str); 4] = [
    ("everywhere", "Everywhere"),
    ("appliance", "Appliance"),
    ("kernel", "Kernel"),
    ("test", "Test"),
];

fn main() {
    println!("cargo:rerun-if-changed=keys.toml");
    let text = fs::read_to_string("keys.toml").expect("keys.toml: cannot read");
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("keys.toml: {e}"));
    let entries = match table.get("key") {
        Some(toml::Value::Array(entries)) if table.len() == 1 => entries,
        _ => panic!("keys.toml: holds one array of tables, [[key]]"),
    };
    let mut out = String::from("&[\n");
    let mut seen = Vec::new();
    for (n, entry) in entries.iter().enumerate() {
        let at = |what: &str| format!("keys.toml: [[key]] number {}: {what}", n + 1);
        let entry = entry
            .as_table()
            .unwrap_or_else(|| panic!("{}", at("not a table")));
        for field in entry.keys() {
            if !["key", "scope", "value", "default", "list"].contains(&field.as_str()) {
                panic!("{}", at(&format!("unknown field `{field}`")));
            }
        }
        let text = |field: &str| -> &str {
            entry
                .get(field)
                .and_then(toml::Value::as_str)
                .unwrap_or_else(|| panic!("{}", at(&format!("`{field}` missing or not a string"))))
        };
        let key = text("key");
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            || seen.contains(&key)
        {
            panic!(
                "{}",
                at(&format!("key `{key}` is empty, not [a-z_.] or repeated"))
            );
        }
        seen.push(key);
        let scope = SCOPES
            .iter()
            .find(|(name, _)| *name == text("scope"))
            .unwrap_or_else(|| {
                panic!(
                    "{}",
                    at("scope is not everywhere, appliance, kernel or test")
                )
            })
            .1;
        let list = match entry.get("list") {
            None => false,
            Some(toml::Value::Boolean(list)) => *list,
            Some(_) => panic!("{}", at("`list` is not true or false")),
        };
        writeln!(
            out,
            "    KeyDoc {{ key: {key:?}, scope: KeyScope::{scope}, value: {:?}, default: {:?}, list: {list} }},",
            text("value"),
            text("default"),
        )
        .unwrap();
    }
    out.push(']');
    let dest = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("key_table.rs");
    fs::write(dest, out).expect("cannot write key_table.rs");
}
