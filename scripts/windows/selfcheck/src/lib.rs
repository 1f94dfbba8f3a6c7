//! Self-check of the Windows CI leg (scripts/windows-tests.sh): if these pass, test binaries and
//! doctests are built for Windows and really run under Wine (with the bcryptprimitives.dll
//! stand-in, which the HashMap's random seed needs).
//!
//! ```
//! assert!(cfg!(windows), "doctest was not compiled for Windows");
//! let mut seeded = std::collections::HashMap::new();
//! seeded.insert("os", std::env::consts::OS);
//! println!("doctest running on {}", seeded["os"]);
//! ```

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_windows() {
        assert!(cfg!(windows));
        assert_eq!(std::env::consts::OS, "windows");
        let seeded: std::collections::HashSet<u32> = (0..3).collect();
        assert_eq!(seeded.len(), 3);
    }
}
