//! Names shared by the host-local named transports (`pipe://`, `mailslot://`; `shm://` uses
//! the Unix private directory).
//!
//! A name is the last part of the endpoint address. It becomes part of a file name on Unix
//! (`pipe-<name>.sock` in a private directory, see `common::unix`) and part of an object name on
//! Windows (`\\.\pipe\ductwork-<name>`, `\\.\mailslot\ductwork\<name>`), so the rules are the
//! strictest of both: 1 to [`MAX_NAME`] bytes, no `/`, `\`, NUL or control characters, and not
//! `.` or `..`.

use ductwork_core::{Endpoint, Error, ErrorKind, Result};

/// The longest name, in bytes. Unix socket paths are limited to 107 bytes, and the private
/// directory plus prefix and suffix take about 30 of them.
pub(crate) const MAX_NAME: usize = 64;

/// Checks a transport-local name against the rules in the module docs.
pub(crate) fn check_name(ep: &Endpoint, name: &str) -> Result<()> {
    let bad = |why: String| Err(Error::new(ErrorKind::InvalidEndpoint, ep, why));
    if name.is_empty() {
        return bad("the name is empty".into());
    }
    if name.len() > MAX_NAME {
        return bad(format!(
            "the name is {} bytes long; the limit is {MAX_NAME}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return bad(format!("`{name}` is not a usable name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '\0') || c.is_control())
    {
        return bad(format!("the name may not contain {c:?}"));
    }
    Ok(())
}

/// Splits `server/name` into `(Some(server), name)` and `name` into `(None, name)`; a server
/// of `.` means this machine and yields `None`.
// Only pipe:// and mailslot:// have a server part; shm:// shares the rest of this module.
#[cfg_attr(not(any(feature = "pipe", feature = "mailslot")), allow(dead_code))]
pub(crate) fn split_server(address: &str) -> (Option<&str>, &str) {
    match address.split_once('/') {
        Some((".", name)) => (None, name),
        Some((server, name)) => (Some(server), name),
        None => (None, address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ep = Endpoint::parse("pipe://x").unwrap();
        for ok in ["a", "orders-1", "ünïcode", &"x".repeat(MAX_NAME)] {
            assert!(check_name(&ep, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a\\b",
            "a/b",
            "a\0b",
            &"x".repeat(MAX_NAME + 1),
        ] {
            let e = check_name(&ep, bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{bad:?}");
        }
        assert_eq!(split_server("srv/n"), (Some("srv"), "n"));
        assert_eq!(split_server("./n"), (None, "n"));
        assert_eq!(split_server("n"), (None, "n"));
        assert_eq!(split_server("a/b/c"), (Some("a"), "b/c"));
    }
}
