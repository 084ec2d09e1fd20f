//! Channel namespaces: by channel-name prefix, who may subscribe, whether
//! clients may publish, whether history/recovery and presence are on
//! (`[[auth.namespaces]]`). A channel takes the rule of the longest prefix
//! it starts with; a channel no rule names keeps today's behaviour
//! (anyone subscribes, publishing as `ws.client_publish` says, history on,
//! presence off).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::Identity;

/// Who may subscribe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Any connection, anonymous ones included.
    #[default]
    Anyone,
    /// Connections with a user (a verified token with a non-empty `sub`).
    Authenticated,
    /// Only the user the channel is named after: the rest of the name
    /// after the prefix is the `sub` (`user:42` for prefix `user:`).
    Owner,
    /// A subscription token signed by the backend for this channel (and
    /// this user, if it names one) must come with `subscribe`.
    Token,
    /// Users in one of the rule's `groups` (the token's `groups` claim).
    Groups,
}

fn yes() -> bool {
    true
}

/// One namespace: `[[auth.namespaces]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Channels whose name starts with this (e.g. `user:`); empty: every
    /// channel no longer prefix names.
    pub prefix: String,
    /// `anyone`, `authenticated`, `owner`, `token` or `groups`.
    #[serde(default)]
    pub subscribe: SubscribeRule,
    /// For `subscribe = "groups"`: the groups let in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whether clients may publish (`send_data`) here (still subject to
    /// `ws.client_publish`).
    #[serde(default = "yes")]
    pub publish: bool,
    /// Whether `history` and recovery (`since` on `subscribe`) are on.
    #[serde(default = "yes")]
    pub history: bool,
    /// Whether subscribers may ask `presence` / `presence_stats`.
    #[serde(default)]
    pub presence: bool,
    /// Whether subscribers get `join` / `leave` events.
    #[serde(default)]
    pub join_leave: bool,
}

/// The rule of channels no namespace names: today's behaviour.
pub static DEFAULT_RULE: Rule = Rule {
    prefix: String::new(),
    subscribe: SubscribeRule::Anyone,
    groups: Vec::new(),
    publish: true,
    history: true,
    presence: false,
    join_leave: false,
};

/// Why an operation is refused (the JSON-RPC error message, code -32004).
pub const DENY_AUTHENTICATED: &str = "permission denied: only signed-in users may subscribe here";
pub const DENY_OWNER: &str = "permission denied: only the channel's owner may subscribe";
pub const DENY_TOKEN: &str = "permission denied: a subscription token for this channel is required";
pub const DENY_GROUPS: &str = "permission denied: not in a group allowed here";
pub const DENY_CHANNELS: &str =
    "permission denied: the connection token does not allow this channel";
pub const DENY_PUBLISH: &str = "permission denied: clients may not publish here";
pub const DENY_HISTORY: &str = "permission denied: history is off here";
pub const DENY_PRESENCE: &str = "permission denied: presence is off here";

/// The configured namespaces, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    rules: Vec<Rule>,
}

impl Namespaces {
    pub fn new(rules: &[Rule]) -> Namespaces {
        let mut rules = rules.to_vec();
        rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Namespaces { rules }
    }

    /// The rule for `channel`.
    pub fn rule(&self, channel: &str) -> &Rule {
        self.rules
            .iter()
            .find(|r| channel.starts_with(&*r.prefix))
            .unwrap_or(&DEFAULT_RULE)
    }
}

impl Rule {
    /// Whether `who` may subscribe to `channel`; `signed`: a valid
    /// subscription token for it came with the call.
    pub fn may_subscribe(
        &self,
        who: Option<&Identity>,
        channel: &str,
        signed: bool,
    ) -> Result<(), &'static str> {
        if let Some(id) = who {
            if !id.token_allows(channel) {
                return Err(DENY_CHANNELS);
            }
        }
        let user = who.map(|id| &*id.user).filter(|u| !u.is_empty());
        match self.subscribe {
            SubscribeRule::Anyone => Ok(()),
            SubscribeRule::Authenticated => user.map(|_| ()).ok_or(DENY_AUTHENTICATED),
            SubscribeRule::Owner => match (user, channel.strip_prefix(&*self.prefix)) {
                (Some(u), Some(rest)) if rest == u => Ok(()),
                _ => Err(DENY_OWNER),
            },
            SubscribeRule::Token => signed.then_some(()).ok_or(DENY_TOKEN),
            SubscribeRule::Groups => {
                let groups = who.map_or(&[][..], |id| id.groups());
                groups
                    .iter()
                    .any(|g| self.groups.iter().any(|a| **a == **g))
                    .then_some(())
                    .ok_or(DENY_GROUPS)
            }
        }
    }
}

/// Whether `channel` matches `pattern`: equal, or `pattern` ends with `*`
/// and `channel` starts with what precedes it.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Claims;

    fn rule(prefix: &str, subscribe: SubscribeRule) -> Rule {
        Rule {
            prefix: prefix.into(),
            subscribe,
            ..DEFAULT_RULE.clone()
        }
    }

    fn id(sub: &str, groups: &[&str]) -> Identity {
        Identity::new(
            sub.into(),
            Claims {
                sub: sub.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                ..Claims::default()
            },
        )
    }

    #[test]
    fn longest_prefix_wins_and_default_is_today() {
        let ns = Namespaces::new(&[
            rule("user:", SubscribeRule::Owner),
            rule("user:admin:", SubscribeRule::Groups),
        ]);
        assert_eq!(ns.rule("user:1").subscribe, SubscribeRule::Owner);
        assert_eq!(ns.rule("user:admin:x").subscribe, SubscribeRule::Groups);
        assert_eq!(ns.rule("news"), &DEFAULT_RULE);
        assert!(DEFAULT_RULE.may_subscribe(None, "news", false).is_ok());
    }

    #[test]
    fn each_subscribe_rule() {
        let ann = id("ann", &["staff"]);
        let bob = id("bob", &[]);
        let anon = id("", &[]);
        let r = rule("user:", SubscribeRule::Owner);
        assert!(r.may_subscribe(Some(&ann), "user:ann", false).is_ok());
        assert_eq!(
            r.may_subscribe(Some(&bob), "user:ann", false),
            Err(DENY_OWNER)
        );
        assert_eq!(r.may_subscribe(None, "user:", false), Err(DENY_OWNER));
        assert_eq!(
            r.may_subscribe(Some(&anon), "user:", false),
            Err(DENY_OWNER)
        );
        let r = rule("", SubscribeRule::Authenticated);
        assert!(r.may_subscribe(Some(&bob), "x", false).is_ok());
        assert_eq!(r.may_subscribe(None, "x", false), Err(DENY_AUTHENTICATED));
        assert_eq!(
            r.may_subscribe(Some(&anon), "x", false),
            Err(DENY_AUTHENTICATED)
        );
        let mut r = rule("staff:", SubscribeRule::Groups);
        r.groups = vec!["staff".into()];
        assert!(r.may_subscribe(Some(&ann), "staff:1", false).is_ok());
        assert_eq!(
            r.may_subscribe(Some(&bob), "staff:1", false),
            Err(DENY_GROUPS)
        );
        let r = rule("vip:", SubscribeRule::Token);
        assert!(r.may_subscribe(None, "vip:1", true).is_ok());
        assert_eq!(r.may_subscribe(Some(&ann), "vip:1", false), Err(DENY_TOKEN));
    }

    #[test]
    fn token_channel_patterns() {
        assert!(pattern_matches("news:*", "news:1"));
        assert!(pattern_matches("a", "a"));
        assert!(!pattern_matches("a", "ab"));
        assert!(!pattern_matches("news:*", "chat"));
    }
}
