//! Identity and access: who a connection is (from a verified token) and
//! what the channel namespaces let it do. Sans-IO, unit-tested; the shard
//! runtime asks it and enforces the answer.
//!
//! Close codes a connection may get for identity reasons (documented in
//! the README, "Authentication and permissions"):
//!
//! - [`CLOSE_UNAUTHORIZED`] 4001: `auth.required` and no valid `connect`
//!   within `ws.handshake_timeout`, or a first call other than `connect`.
//! - [`CLOSE_TOKEN_EXPIRED`] 4003: the connection token expired and no
//!   `refresh` came in time; reconnect with a new token.
//! - [`CLOSE_DISCONNECTED`] 4004: the backend asked (`disconnect {user}`).
#![forbid(unsafe_code)]

pub mod rules;
pub mod token;

use std::rc::Rc;

pub use rules::{Namespaces, Rule, SubscribeRule};
pub use token::{Claims, TokenError, Verifier};

pub const CLOSE_UNAUTHORIZED: u16 = 4001;
pub const CLOSE_TOKEN_EXPIRED: u16 = 4003;
pub const CLOSE_DISCONNECTED: u16 = 4004;

/// Compares a presented secret (API token, DMOJ/LQDOJ sender key,
/// dashboard token) with the configured one in constant time (`subtle`:
/// no early exit and no data-dependent branch over the bytes, kept so by
/// its optimisation barrier). Only the length is compared plainly.
pub fn ct_eq(given: &[u8], want: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(want).into()
}

/// A user's personal channel is this prefix and the `sub`: every
/// authenticated connection of the user is in it, subscribed or not.
pub const PERSONAL_PREFIX: &str = "user:";

/// The node's access configuration, built once at start.
#[derive(Debug, Default)]
pub struct Access {
    pub verifier: Verifier,
    pub namespaces: Namespaces,
    /// `auth.required`.
    pub required: bool,
}

impl Access {
    pub fn new(cfg: &crate::ops::config::AuthConfig) -> Access {
        let verifier = cfg.verifier().unwrap_or_else(|e| {
            // Config::validate read the same files moments ago.
            tracing::error!("auth keys: {e}; every token will be refused");
            Verifier::empty()
        });
        Access {
            verifier,
            namespaces: Namespaces::new(&cfg.namespaces),
            required: cfg.required,
        }
    }

    /// Whether tokens are looked at at all (a key is configured).
    pub fn enabled(&self) -> bool {
        !self.verifier.is_empty()
    }
}

/// Who a connection is: kept by the shard behind one pointer in the
/// connection (none for anonymous connections). The user id is interned
/// per shard; claims a connection does not use (no groups, no channel
/// list, no info) take no room.
#[derive(Debug)]
pub struct Identity {
    /// The `sub` claim (interned in the shard's user index).
    pub user: Rc<str>,
    /// Unix seconds the token expires at, if it does.
    pub exp: Option<u64>,
    pub extra: Option<Box<Extra>>,
}

/// The claims beyond `sub` and `exp`.
#[derive(Debug, Default)]
pub struct Extra {
    pub groups: Box<[Box<str>]>,
    pub sid: Option<Box<str>>,
    /// `channels` patterns, when the token restricts them.
    pub channels: Option<Box<[Box<str>]>>,
    /// `info` as compact JSON.
    pub info: Option<Box<str>>,
}

impl Identity {
    /// An identity from verified claims, with `user` already interned.
    pub fn new(user: Rc<str>, claims: Claims) -> Identity {
        let extra = (!claims.groups.is_empty()
            || claims.sid.is_some()
            || claims.channels.is_some()
            || claims.info.is_some())
        .then(|| {
            Box::new(Extra {
                groups: claims.groups.into_iter().map(Into::into).collect(),
                sid: claims.sid.map(Into::into),
                channels: claims
                    .channels
                    .map(|c| c.into_iter().map(Into::into).collect()),
                info: claims.info.map(|v| v.to_string().into()),
            })
        });
        Identity {
            user,
            exp: claims.exp,
            extra,
        }
    }

    pub fn groups(&self) -> &[Box<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.groups)
    }

    pub fn sid(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.sid.as_deref())
    }

    pub fn info(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.info.as_deref())
    }

    /// Whether the token's `channels` list (if any) lets it at `channel`.
    pub fn token_allows(&self, channel: &str) -> bool {
        match self.extra.as_ref().and_then(|e| e.channels.as_ref()) {
            None => true,
            Some(patterns) => patterns.iter().any(|p| rules::pattern_matches(p, channel)),
        }
    }
}

/// The token given on an upgrade request: `?token=` in the URL, else
/// `Authorization: Bearer` (case-insensitive scheme). `head` is the
/// complete request head.
pub fn upgrade_token(path: &str, head: &[u8]) -> Option<String> {
    if let Some(query) = path.split_once('?').map(|(_, q)| q) {
        for pair in query.split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                return Some(v.to_owned());
            }
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).ok()?;
    let mut found = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("authorization") {
            if found.is_some() {
                // Two Authorization headers: trust neither.
                return Some(String::new());
            }
            let v = std::str::from_utf8(h.value).ok()?.trim();
            let (scheme, rest) = v.split_once(' ')?;
            if scheme.eq_ignore_ascii_case("bearer") {
                found = Some(rest.trim().to_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"secret"));
    }

    #[test]
    fn token_from_query_or_bearer_header() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc.def.ghi\r\n\r\n";
        assert_eq!(
            upgrade_token("/?token=q.r.s", head).as_deref(),
            Some("q.r.s")
        );
        assert_eq!(upgrade_token("/", head).as_deref(), Some("abc.def.ghi"));
        let basic = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eA==\r\n\r\n";
        assert_eq!(upgrade_token("/?a=1", basic), None);
        let two = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n";
        assert_eq!(upgrade_token("/", two).as_deref(), Some(""));
    }

    #[test]
    fn extra_claims_only_when_present() {
        let id = Identity::new(
            "u".into(),
            Claims {
                sub: "u".into(),
                ..Claims::default()
            },
        );
        assert!(id.extra.is_none());
        assert!(id.token_allows("anything"));
        let id = Identity::new(
            "u".into(),
            Claims {
                sub: "u".into(),
                channels: Some(vec!["news:*".into()]),
                groups: vec!["g".into()],
                ..Claims::default()
            },
        );
        assert!(id.token_allows("news:1"));
        assert!(!id.token_allows("chat"));
        assert_eq!(&*id.groups()[0], "g");
    }
}
