//! `relay.conf`: the configuration file on the EFI system partition, turned into the kernel
//! command line.
//!
//! The file uses the syntax of `netoops_core::config` (whitespace- or newline-separated
//! `key=value` pairs, `#` to the end of the line is a comment), so it holds exactly what a
//! PVH or GRUB boot would put on the command line. [`to_cmdline`] checks the form (text
//! encoding, size, every word a `key=value`) and joins the pairs with single spaces;
//! [`check`] then runs every relay key through the core's parser and the appliance's
//! validation, so a typo is reported on the screen before boot services end, with its line
//! number, instead of only on the serial console after. (`netoops-image disk` runs the same
//! checks before it writes an image.) Files written by Windows editors
//! (a UTF-8 byte-order mark, CRLF line ends) are accepted; UTF-16 is refused with a hint.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use netoops_core::config::{Config, ConfigError};

/// The file's name in the root directory of the EFI system partition.
pub const FILE_NAME: &str = "relay.conf";
/// Largest file read (comments included).
pub const FILE_MAX: usize = 64 * 1024;
/// Longest command line the kernel keeps (`platform::bootinfo::CMDLINE_MAX`) less its NUL.
pub const CMDLINE_MAX: usize = 2047;
/// Keys the kernel platform itself reads (scopes `Kernel` and `Test` of the core's
/// `KEY_TABLE`); the relay's parser does not know them. Keys containing a dot also belong to
/// the platform. The board checks the rest once it runs (e.g. that every collector is on-link
/// or behind `gw=`) and reports on COM1.
pub use netoops_core::config::PLATFORM_KEYS;

/// Why `relay.conf` cannot be used. The `Display` form is the console message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfError {
    /// No `relay.conf` in the root of the partition the stub was loaded from.
    Missing,
    /// The firmware could not read it (status code).
    Unreadable(usize),
    /// Larger than [`FILE_MAX`].
    TooLarge {
        /// Its size.
        bytes: u64,
    },
    /// Saved as UTF-16.
    Utf16,
    /// A line is not valid UTF-8.
    NotText {
        /// 1-based line number.
        line: usize,
    },
    /// No settings at all (empty, or only comments).
    Empty,
    /// The settings, joined, exceed [`CMDLINE_MAX`].
    TooLong {
        /// Length of the joined settings.
        bytes: usize,
    },
    /// A word that is not `key=value`.
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The word.
        word: String,
    },
    /// The relay's parser rejected a value or found a required key missing.
    Invalid {
        /// The line of the offending key (`None` for a missing key).
        line: Option<usize>,
        /// What the parser said.
        error: ConfigError,
    },
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfError::Missing => write!(
                f,
                "{FILE_NAME} not found in the root of the EFI system partition; create it \
                 with at least ip=A.B.C.D/PREFIX and upstream=IP:PORT"
            ),
            ConfError::Unreadable(status) => {
                write!(f, "{FILE_NAME} could not be read (EFI status {status:#x})")
            }
            ConfError::TooLarge { bytes } => write!(
                f,
                "{FILE_NAME} is {bytes} bytes; at most {FILE_MAX} are read"
            ),
            ConfError::Utf16 => write!(
                f,
                "{FILE_NAME} is saved as UTF-16; save it as plain text (ASCII or UTF-8)"
            ),
            ConfError::NotText { line } => {
                write!(f, "{FILE_NAME} line {line}: not plain text (invalid UTF-8)")
            }
            ConfError::Empty => write!(
                f,
                "{FILE_NAME} has no settings; it needs at least ip=A.B.C.D/PREFIX and \
                 upstream=IP:PORT"
            ),
            ConfError::TooLong { bytes } => write!(
                f,
                "{FILE_NAME}: the settings take {bytes} characters without comments; at \
                 most {CMDLINE_MAX} fit"
            ),
            ConfError::Syntax { line, word } => write!(
                f,
                "{FILE_NAME} line {line}: `{word}` is not key=value (no spaces around =)"
            ),
            ConfError::Invalid {
                line: Some(line),
                error,
            } => write!(f, "{FILE_NAME} line {line}: {error}"),
            ConfError::Invalid { line: None, error } => write!(f, "{FILE_NAME}: {error}"),
        }
    }
}

/// One `key=value` with the line it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pair<'a> {
    line: usize,
    key: &'a str,
    value: &'a str,
}

fn pairs(text: &str) -> impl Iterator<Item = Result<Pair<'_>, ConfError>> {
    text.lines().enumerate().flat_map(|(index, line)| {
        let line_no = index + 1;
        let settings = line.split('#').next().unwrap_or("");
        settings
            .split_whitespace()
            .map(move |word| match word.split_once('=') {
                Some((key, value)) if !key.is_empty() => Ok(Pair {
                    line: line_no,
                    key,
                    value,
                }),
                _ => Err(ConfError::Syntax {
                    line: line_no,
                    word: word.to_string(),
                }),
            })
    })
}

/// Checks the file's form and returns its settings as one command line.
pub fn to_cmdline(bytes: &[u8]) -> Result<String, ConfError> {
    if bytes.len() > FILE_MAX {
        return Err(ConfError::TooLarge {
            bytes: bytes.len() as u64,
        });
    }
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err(ConfError::Utf16);
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = core::str::from_utf8(bytes).map_err(|e| ConfError::NotText {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;
    let mut cmdline = String::new();
    for pair in pairs(text) {
        let pair = pair?;
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(pair.key);
        cmdline.push('=');
        cmdline.push_str(pair.value);
    }
    if cmdline.is_empty() {
        return Err(ConfError::Empty);
    }
    if cmdline.len() > CMDLINE_MAX {
        return Err(ConfError::TooLong {
            bytes: cmdline.len(),
        });
    }
    Ok(cmdline)
}

/// What the file configures, for the message printed before boot services end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The relay configuration as the kernel will parse it.
    pub config: Config,
    /// The `selftest=` value, when the file asks the kernel for a self-test instead of the
    /// relay (then `ip`/`upstream` are not required).
    pub selftest: Option<String>,
}

/// Runs the relay's keys through the core's parser and the appliance checks. `text` is the
/// original file (for line numbers); it must already have passed [`to_cmdline`].
pub fn check(text: &[u8]) -> Result<Checked, ConfError> {
    let text = core::str::from_utf8(text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text))
        .map_err(|_| ConfError::NotText { line: 1 })?;
    let mut config = Config::default();
    let mut selftest = None;
    for pair in pairs(text) {
        let pair = pair?;
        if pair.key == "selftest" {
            selftest = Some(pair.value.to_string());
        }
        if pair.key == "heap" {
            netoops_core::config::check_heap(pair.value).map_err(|error| ConfError::Invalid {
                line: Some(pair.line),
                error,
            })?;
        }
        if PLATFORM_KEYS.contains(&pair.key) || pair.key.contains('.') {
            continue;
        }
        config
            .set(pair.key, pair.value)
            .map_err(|error| ConfError::Invalid {
                line: Some(pair.line),
                error,
            })?;
    }
    if selftest.is_none() {
        config
            .validate_for_appliance()
            .map_err(|error| ConfError::Invalid {
                // A size problem is reported against `memory`; point at it when present.
                line: pairs(text)
                    .filter_map(Result::ok)
                    .filter(|p| p.key == error.key)
                    .map(|p| p.line)
                    .last(),
                error,
            })?;
    }
    Ok(Checked { config, selftest })
}

/// One line describing the configuration, e.g. `ip 10.0.0.2/24 gw 10.0.0.1 port 2004
/// upstream 10.0.0.1:2005`.
pub fn summary(checked: &Checked) -> String {
    if let Some(name) = &checked.selftest {
        return alloc::format!("self-test {name}");
    }
    let c = &checked.config;
    let mut s = String::new();
    if let Some((ip, prefix)) = c.address {
        s.push_str(&alloc::format!("ip {ip}/{prefix} "));
    }
    if let Some(gw) = c.gateway {
        s.push_str(&alloc::format!("gw {gw} "));
    }
    s.push_str(&alloc::format!("port {} upstream", c.listen_port));
    let upstreams: Vec<String> = c.upstreams.iter().map(|u| u.to_string()).collect();
    s.push(' ');
    s.push_str(&upstreams.join(","));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# relay for rack 7\n\
                        ip=10.0.0.2/24   gw=10.0.0.1\n\
                        \n\
                        upstream=10.0.0.1:2005,10.0.0.9:2005 # two collectors\n\
                        name=rack-7\n";

    /// Checks that `text` becomes the command line `cmdline` and passes [`check`]; what
    /// `check` found.
    fn accepted(text: &[u8], cmdline: &str) -> Checked {
        assert_eq!(to_cmdline(text).unwrap(), cmdline);
        check(text).unwrap()
    }

    #[test]
    fn comments_and_newlines_become_one_command_line() {
        let checked = accepted(
            GOOD.as_bytes(),
            "ip=10.0.0.2/24 gw=10.0.0.1 upstream=10.0.0.1:2005,10.0.0.9:2005 name=rack-7",
        );
        assert_eq!(checked.config.upstreams.len(), 2);
        assert_eq!(checked.selftest, None);
        assert_eq!(
            summary(&checked),
            "ip 10.0.0.2/24 gw 10.0.0.1 port 2004 upstream 10.0.0.1:2005,10.0.0.9:2005"
        );
    }

    #[test]
    fn windows_line_ends_and_byte_order_mark_are_accepted() {
        let text = b"\xef\xbb\xbfip=10.0.0.2/24\r\nupstream=10.0.0.1:2005\r\n";
        accepted(text, "ip=10.0.0.2/24 upstream=10.0.0.1:2005");
    }

    #[test]
    fn form_errors_say_where() {
        assert_eq!(to_cmdline(b"").unwrap_err(), ConfError::Empty);
        assert_eq!(to_cmdline(b"# nothing\n\n").unwrap_err(), ConfError::Empty);
        assert_eq!(
            to_cmdline(b"ip=10.0.0.2/24\nupstream = 10.0.0.1:2005\n").unwrap_err(),
            ConfError::Syntax {
                line: 2,
                word: "upstream".into()
            }
        );
        assert_eq!(
            to_cmdline(b"=5").unwrap_err(),
            ConfError::Syntax {
                line: 1,
                word: "=5".into()
            }
        );
        assert_eq!(
            to_cmdline(b"ip=1\nname=\xff\n").unwrap_err(),
            ConfError::NotText { line: 2 }
        );
        assert_eq!(to_cmdline(b"\xff\xfei\0p\0").unwrap_err(), ConfError::Utf16);
        let long = alloc::format!("name={}", "x".repeat(CMDLINE_MAX));
        assert_eq!(
            to_cmdline(long.as_bytes()).unwrap_err(),
            ConfError::TooLong {
                bytes: CMDLINE_MAX + 5
            }
        );
        let huge = alloc::vec![b'#'; FILE_MAX + 1];
        assert!(matches!(to_cmdline(&huge), Err(ConfError::TooLarge { .. })));
        // Comments do not count against the command-line limit.
        let mut commented = String::from("ip=10.0.0.2/24 upstream=10.0.0.1:2005\n");
        for _ in 0..100 {
            commented.push_str("# a long explanation of what the relay does and why ...\n");
        }
        assert!(to_cmdline(commented.as_bytes()).is_ok());
    }

    #[test]
    fn bad_values_and_missing_keys_name_key_and_line() {
        let err = check(b"ip=10.0.0.2/24\nupstream=10.0.0.1\n").unwrap_err();
        assert!(
            matches!(&err, ConfError::Invalid { line: Some(2), error } if error.key == "upstream")
        );
        assert!(err
            .to_string()
            .starts_with("relay.conf line 2: configuration key `upstream`"));

        let err = check(b"upstream=10.0.0.1:2005\n").unwrap_err();
        assert!(matches!(&err, ConfError::Invalid { line: None, error } if error.key == "ip"));
        assert!(err.to_string().contains("missing"), "{err}");

        let err = check(b"ip=10.0.0.2/24 upstream=10.0.0.1:2005\ncolour=blue\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("unknown key"), "{err}");

        let err = check(b"ip=10.0.0.2/24 upstream=10.0.0.1:2005\nmemory=1K\n").unwrap_err();
        assert!(
            matches!(&err, ConfError::Invalid { line: Some(2), .. }),
            "{err}"
        );

        // The kernel's heap cap, checked here as the kernel checks it.
        let err = check(b"ip=10.0.0.2/24 upstream=10.0.0.1:2005\nheap=1M\n").unwrap_err();
        assert!(
            matches!(&err, ConfError::Invalid { line: Some(2), error } if error.key == "heap"),
            "{err}"
        );
        assert!(check(b"ip=10.0.0.2/24 upstream=10.0.0.1:2005\nheap=64M\n").is_ok());
    }

    #[test]
    fn platform_keys_pass_and_a_selftest_needs_no_relay_settings() {
        let text = b"selftest=exit heap=64M virtio_mmio.device=512@0xfeb00e00:12\n";
        let checked = accepted(
            text,
            "selftest=exit heap=64M virtio_mmio.device=512@0xfeb00e00:12",
        );
        assert_eq!(checked.selftest.as_deref(), Some("exit"));
        assert_eq!(summary(&checked), "self-test exit");
        // Relay keys are still checked during a self-test.
        assert!(check(b"selftest=exit port=0").is_err());
    }

    #[test]
    fn messages_name_the_file() {
        for e in [
            ConfError::Missing,
            ConfError::Unreadable(0x8000_0000_0000_0002),
            ConfError::Empty,
            ConfError::Utf16,
        ] {
            assert!(e.to_string().starts_with("relay.conf"), "{e}");
        }
    }
}
