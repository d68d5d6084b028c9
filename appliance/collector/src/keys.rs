//! The collector's relay keys (`serve --keys FILE`): which pre-shared key authenticates which
//! relay key id, and the replay identity an authenticated session gets.
//!
//! File format: one `ID KEY` per line (`KEY` 64 hex digits, 32 bytes), `#` starts a comment,
//! blank lines ignored. An id may appear on several lines: during a key rotation the collector
//! accepts each of them, so relays still holding the old key keep delivering while the new one
//! is rolled out. A bad line refuses the whole file, naming the line.
//!
//! A table loaded from a file follows it: when the file's modification time changes, the
//! next handshake reads it again (a file that no longer parses is reported on stderr and the
//! keys in force are kept), so keys are added and retired without restarting the collector.

use blake2::{Blake2s256, Digest};
use netoops_core::upstream::secure::{valid_key_id, Psk};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

type Keys = HashMap<String, Vec<Psk>>;

/// Keys by relay key id.
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: RwLock<Keys>,
    /// The file it follows, and its modification time when last read.
    source: Option<(PathBuf, Mutex<Option<SystemTime>>)>,
}

impl KeyTable {
    /// Parses a keys file's text; an error names the line.
    pub fn parse(text: &str) -> Result<KeyTable, String> {
        Ok(KeyTable {
            keys: RwLock::new(parse_keys(text)?),
            source: None,
        })
    }

    /// Reads and parses a keys file, and follows it from then on (module doc).
    pub fn load(path: &Path) -> Result<KeyTable, String> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let keys = read_keys(path)?;
        Ok(KeyTable {
            keys: RwLock::new(keys),
            source: Some((path.to_path_buf(), Mutex::new(modified))),
        })
    }

    /// Reads the file again if it changed since.
    fn refresh(&self) {
        let Some((path, seen)) = &self.source else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if modified == *seen {
            return;
        }
        *seen = modified;
        match read_keys(path) {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
                eprintln!("netoops-collect: keys file {} read again", path.display());
            }
            Err(e) => eprintln!("netoops-collect: {e}; keeping the keys in force"),
        }
    }

    /// The keys accepted for `id` (empty: unknown id).
    pub fn lookup(&self, id: &str) -> Vec<Psk> {
        self.refresh();
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(id).cloned().unwrap_or_default()
    }

    /// Number of key ids.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the table is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read_keys(path: &Path) -> Result<Keys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    parse_keys(&text).map_err(|e| format!("keys file {}: {e}", path.display()))
}

fn parse_keys(text: &str) -> Result<Keys, String> {
    let mut keys: HashMap<String, Vec<Psk>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("line {n}: expected `ID KEY`"));
        };
        if !valid_key_id(id) {
            return Err(format!(
                "line {n}: key id must be 1-64 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        let psk = Psk::from_hex(hex)
            .ok_or_else(|| format!("line {n}: key must be 64 hex digits (32 bytes)"))?;
        let entry = keys.entry(id.to_string()).or_default();
        if !entry.contains(&psk) {
            entry.push(psk);
        }
    }
    if keys.is_empty() {
        return Err("no keys".to_string());
    }
    Ok(keys)
}

/// The replay identity of an authenticated session: the first 8 bytes of
/// BLAKE2s(key id, claimed instance). The collector's replay state and stored
/// `relay_instance` use it, so a client holding another key cannot reach (or even name) a
/// relay's replay state by claiming its instance id: it lands in a state of its own.
pub fn replay_instance(key_id: &str, instance: u64) -> u64 {
    let mut h = Blake2s256::new();
    h.update(b"netoops replay instance v1");
    h.update([key_id.len() as u8]);
    h.update(key_id.as_bytes());
    h.update(instance.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// 32 bytes of the OS's randomness (a connection's ephemeral seed).
pub fn os_seed() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// A new key: 32 random bytes as hex (`netoops-collect keygen`).
pub fn generate_key() -> std::io::Result<String> {
    Ok(Psk(os_seed()?).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const K2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn several_keys_per_id_and_bad_lines_named() {
        let t = KeyTable::parse(&format!(
            "# rotation\nedge-1 {K1}\n\nedge-1 {K2}  # new\nedge-2 {K1}\n"
        ))
        .unwrap();
        assert_eq!(t.lookup("edge-1").len(), 2);
        assert_eq!(t.lookup("edge-2").len(), 1);
        assert!(t.lookup("edge-3").is_empty());
        let e = KeyTable::parse(&format!("edge-1 {K1}\nedge-2 0011\n")).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = KeyTable::parse(&format!("edge 1 {K1}\n")).unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let e = KeyTable::parse(&format!("ed\x1bge {K1}\n")).unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(KeyTable::parse("# nothing\n").is_err());
    }

    #[test]
    fn a_loaded_table_follows_its_file_and_keeps_its_keys_when_the_file_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let write = |text: &str, secs: u64| {
            std::fs::write(&path, text).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        write(&format!("edge-1 {K1}\n"), 1000);
        let t = KeyTable::load(&path).unwrap();
        assert_eq!(t.lookup("edge-1"), vec![Psk::from_hex(K1).unwrap()]);
        write(&format!("edge-1 {K1}\nedge-1 {K2}\n"), 2000);
        assert_eq!(t.lookup("edge-1").len(), 2);
        write(&format!("edge-1 {K2}\n"), 3000);
        assert_eq!(t.lookup("edge-1"), vec![Psk::from_hex(K2).unwrap()]);
        write("edge-1 broken\n", 4000);
        assert_eq!(t.lookup("edge-1"), vec![Psk::from_hex(K2).unwrap()]);
    }

    #[test]
    fn replay_instances_differ_by_key_id() {
        assert_ne!(replay_instance("a", 7), replay_instance("b", 7));
        assert_ne!(replay_instance("a", 7), replay_instance("a", 8));
        assert_eq!(replay_instance("a", 7), replay_instance("a", 7));
    }
}
