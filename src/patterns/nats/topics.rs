//! Topics as NATS subjects, and topic prefixes as NATS subscriptions (the mapping the
//! module docs of `patterns::nats` state).

/// The longest topic, in bytes: a subject must fit the NATS server's control line (4 KiB by
/// default), or the server drops the client's connection.
pub(super) const MAX_TOPIC: usize = 1024;

/// Why `topic` is no sequence of NATS subject tokens, if it is not. The empty topic is
/// the endpoint's subject itself.
pub(super) fn check(topic: &str) -> Result<(), String> {
    if topic.len() > MAX_TOPIC {
        return Err(format!("longer than {MAX_TOPIC} bytes"));
    }
    if topic.is_empty() {
        return Ok(());
    }
    for token in topic.split('.') {
        if token.is_empty() {
            return Err("an empty token (a leading, trailing or double dot)".into());
        }
        if let Some(c) = token
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '*' || *c == '>')
        {
            return Err(format!(
                "{c:?} is not allowed (no spaces, control characters, `*` or `>`)"
            ));
        }
    }
    Ok(())
}

/// The subject of `topic` under `base`.
pub(super) fn subject(base: &str, topic: &str) -> String {
    if topic.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{topic}")
    }
}

/// The topic of a message on `subject`, if it is under `base`.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(super) fn topic<'a>(base: &str, subject: &'a str) -> Option<&'a str> {
    if subject == base {
        return Some("");
    }
    subject.strip_prefix(base)?.strip_prefix('.')
}

/// The NATS subscriptions that deliver every topic under `base` that starts with one of
/// `prefixes`, none overlapping another (so no message arrives twice). A prefix's complete
/// tokens (up to its last dot) pick the subtree `base.TOKENS.>`; the partial token after
/// them, if any, is left to the subscriber's own filter. A prefix whose complete tokens are
/// no valid subject matches no topic `publish` accepts, and subscribes to nothing.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(super) fn subscriptions(base: &str, prefixes: &[String]) -> Vec<String> {
    let mut exact = false;
    let mut heads: Vec<&str> = Vec::new();
    for p in prefixes {
        if p.is_empty() {
            exact = true;
        }
        let head = p.rfind('.').map_or("", |i| &p[..i]);
        if check(head).is_ok() {
            heads.push(head);
        }
    }
    // Shortest first: a head covers those below it.
    heads.sort_by_key(|h| h.len());
    let mut kept: Vec<&str> = Vec::new();
    for h in heads {
        let covered = kept.iter().any(|k| {
            k.is_empty() || h == *k || h.strip_prefix(k).is_some_and(|r| r.starts_with('.'))
        });
        if !covered {
            kept.push(h);
        }
    }
    let mut subs: Vec<String> = kept
        .iter()
        .map(|h| format!("{}.>", subject(base, h)))
        .collect();
    if exact {
        subs.push(base.to_string());
    }
    subs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(prefixes: &[&str]) -> Vec<String> {
        let p: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        subscriptions("svc", &p)
    }

    #[test]
    fn token_aligned_prefixes_are_server_side_subtrees() {
        assert_eq!(subs(&["a."]), ["svc.a.>"]);
        assert_eq!(subs(&["a.b."]), ["svc.a.b.>"]);
        assert_eq!(subs(&[""]), ["svc.>", "svc"]);
    }

    #[test]
    fn a_partial_token_widens_to_its_parent() {
        assert_eq!(subs(&["a.bo"]), ["svc.a.>"]);
        assert_eq!(subs(&["bo"]), ["svc.>"]);
    }

    #[test]
    fn overlapping_prefixes_do_not_overlap_as_subscriptions() {
        assert_eq!(subs(&["a.b.", "a.", "c"]), ["svc.>"]);
        assert_eq!(subs(&["a.b.", "a."]), ["svc.a.>"]);
        assert_eq!(subs(&["ab.", "a."]), ["svc.a.>", "svc.ab.>"]);
        assert_eq!(subs(&["a.", "b.", "a.x"]), ["svc.a.>", "svc.b.>"]);
        assert_eq!(subs(&["a..", "a b."]), Vec::<String>::new());
    }

    #[test]
    fn topics_must_be_subject_tokens() {
        for ok in ["", "a", "a.b", "prices.bolt-m8", "prix.café"] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in ["a.", ".a", "a..b", "a b", "a.*", "a.>", "a\tb", "a*"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check(&"a".repeat(MAX_TOPIC + 1)).is_err());
    }

    #[test]
    fn subjects_and_topics_round_trip() {
        assert_eq!(subject("svc", ""), "svc");
        assert_eq!(subject("svc", "a.b"), "svc.a.b");
        assert_eq!(topic("svc", "svc"), Some(""));
        assert_eq!(topic("svc", "svc.a.b"), Some("a.b"));
        assert_eq!(topic("svc", "svcx.a"), None);
    }
}
