//! LQDOJ's events (`websocket/daemon.js` of LQDJudge/online-judge), sans-IO:
//! a Socket.IO EVENT's arguments become one command of the connection's
//! role. The replies keep LQDOJ's bytes; the inputs that crash LQDOJ's
//! daemon (`42["set-filter"]`, `42["start-msg"]`, `42["post",null]`) get an
//! `error` event here instead.
#![forbid(unsafe_code)]

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::packet::PacketError;
use crate::protocol::dmoj::error_json;
use crate::protocol::rpc::valid_channel;

/// Who a connection is, from its CONNECT auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `{role:"sender", token}`: the site's backend.
    Sender,
    /// Anyone else: browsers.
    Client,
}

/// What one event asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Sender: publish.
    Post { channel: Box<str>, data: Bytes },
    /// The last assigned id.
    LastMsg,
    /// Client: remember the page's last id.
    StartMsg(u64),
    /// Client: follow exactly these channels, replaying what was missed.
    SetFilter(Vec<Box<str>>),
    /// Refused with this error object (ack or `error` event).
    Error(Vec<u8>),
    /// An event LQDOJ has no handler for: nothing happens.
    Ignore,
}

/// Socket.IO's reserved event names, which a client may not emit.
const RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// LQDOJ's channel rule (a non-empty string of at most 100 characters),
/// within ringcast's (printable ASCII, no spaces).
pub fn lqdoj_channel(v: &Value) -> Option<&str> {
    v.as_str()
        .filter(|c| c.chars().count() <= 100 && valid_channel(c))
}

/// Parses an EVENT's JSON arguments (`["name", ...args]`). `Err`: the
/// payload is not an event at all (the connection closes, as Socket.IO's
/// decoder does); any bad argument is a [`Command::Error`].
pub fn parse_event(json: &[u8], role: Role, max_subs: usize) -> Result<Command, PacketError> {
    let args: Vec<&RawValue> = serde_json::from_slice(json)
        .map_err(|_| PacketError("invalid Socket.IO event: payload is not a JSON array"))?;
    let Some(name) = args.first() else {
        return Err(PacketError("invalid Socket.IO event: empty array"));
    };
    let name: Value = serde_json::from_str(name.get())
        .map_err(|_| PacketError("invalid Socket.IO event: bad name"))?;
    let name = match &name {
        Value::String(s) if RESERVED.contains(&s.as_str()) => {
            return Err(PacketError("invalid Socket.IO event: reserved event name"))
        }
        Value::String(s) => s.as_str(),
        // A number is a valid name no handler here listens to.
        Value::Number(_) => return Ok(Command::Ignore),
        _ => return Err(PacketError("invalid Socket.IO event: bad name")),
    };
    let arg = args.get(1).map(|a| a.get());
    Ok(match (role, name) {
        (Role::Sender, "post") => parse_post(arg),
        (_, "last-msg") => Command::LastMsg,
        (Role::Client, "post") => {
            Command::Error(error_json("unauthorized", Some("Unauthorized operation")))
        }
        (Role::Client, "start-msg") => parse_start(arg),
        (Role::Client, "set-filter") => parse_filter(arg, max_subs),
        _ => Command::Ignore,
    })
}

fn parse_post(arg: Option<&str>) -> Command {
    #[derive(serde::Deserialize)]
    struct Post<'a> {
        channel: Option<Value>,
        #[serde(borrow)]
        message: Option<&'a RawValue>,
    }
    let invalid = || Command::Error(error_json("invalid-channel", Some("Invalid channel")));
    let Some(post) = arg.and_then(|a| serde_json::from_str::<Post<'_>>(a).ok()) else {
        return invalid();
    };
    let Some(channel) = post.channel.as_ref().and_then(lqdoj_channel) else {
        return invalid();
    };
    // LQDOJ forwards `message` as given; a missing one is `undefined`,
    // which Socket.IO's JSON encoding turns into `null`.
    let data = post.message.map_or("null", RawValue::get);
    Command::Post {
        channel: channel.into(),
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn parse_start(arg: Option<&str>) -> Command {
    let v: Option<Value> = arg.and_then(|a| serde_json::from_str(a).ok());
    let Some(Value::Object(o)) = v else {
        return Command::Error(error_json(
            "invalid-start",
            Some("start-msg needs an object {start: id}"),
        ));
    };
    // LQDOJ: `data.start || 0`.
    let start = match o.get("start") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    Command::StartMsg(start)
}

fn parse_filter(arg: Option<&str>, max_subs: usize) -> Command {
    let v: Option<Value> = arg.and_then(|a| serde_json::from_str(a).ok());
    let invalid = || Command::Error(error_json("invalid-filter", Some("Invalid filter")));
    let Some(list) = v
        .as_ref()
        .and_then(|v| v.get("filter"))
        .and_then(Value::as_array)
    else {
        return invalid();
    };
    if list.is_empty() {
        return invalid();
    }
    if list.len() > max_subs {
        return Command::Error(error_json(
            "too-many-subscriptions",
            Some(&format!("Maximum {max_subs} subscriptions per connection")),
        ));
    }
    let mut channels: Vec<Box<str>> = Vec::with_capacity(list.len());
    for c in list {
        let Some(c) = lqdoj_channel(c) else {
            return Command::Error(error_json(
                "invalid-channel",
                Some("Channel must be a non-empty string (max 100 chars)"),
            ));
        };
        if !channels.iter().any(|x| &**x == c) {
            channels.push(c.into());
        }
    }
    Command::SetFilter(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, message: &str) -> Command {
        Command::Error(error_json(code, Some(message)))
    }

    fn client(json: &str) -> Command {
        parse_event(json.as_bytes(), Role::Client, 10).unwrap()
    }

    fn sender(json: &str) -> Command {
        parse_event(json.as_bytes(), Role::Sender, 10).unwrap()
    }

    #[test]
    fn sender_post_keeps_the_message_bytes() {
        assert_eq!(
            sender(r#"["post",{"channel":"sub_abc","message":{"type":"processing","b":[1,2]}}]"#),
            Command::Post {
                channel: "sub_abc".into(),
                data: Bytes::from_static(br#"{"type":"processing","b":[1,2]}"#),
            }
        );
        assert_eq!(
            sender(r#"["post",{"channel":"c"}]"#),
            Command::Post {
                channel: "c".into(),
                data: Bytes::from_static(b"null"),
            }
        );
        assert_eq!(sender(r#"["last-msg"]"#), Command::LastMsg);
    }

    #[test]
    fn lqdojs_crashing_inputs_are_errors() {
        let bad_channel = err("invalid-channel", "Invalid channel");
        assert_eq!(sender(r#"["post",null]"#), bad_channel);
        assert_eq!(sender(r#"["post"]"#), bad_channel);
        assert_eq!(sender(r#"["post",{"channel":null}]"#), bad_channel);
        assert_eq!(sender(r#"["post",{"channel":""}]"#), bad_channel);
        assert_eq!(
            sender(&format!(r#"["post",{{"channel":"{}"}}]"#, "x".repeat(101))),
            bad_channel
        );
        assert_eq!(
            client(r#"["set-filter"]"#),
            err("invalid-filter", "Invalid filter")
        );
        assert_eq!(
            client(r#"["start-msg"]"#),
            err("invalid-start", "start-msg needs an object {start: id}")
        );
    }

    #[test]
    fn client_events() {
        assert_eq!(
            client(r#"["start-msg",{"start":1753064000123}]"#),
            Command::StartMsg(1753064000123)
        );
        assert_eq!(client(r#"["start-msg",{}]"#), Command::StartMsg(0));
        assert_eq!(
            client(r#"["start-msg",{"start":"17"}]"#),
            Command::StartMsg(17)
        );
        assert_eq!(
            client(r#"["set-filter",{"filter":["a","b","a"]}]"#),
            Command::SetFilter(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            client(r#"["set-filter",{"filter":[]}]"#),
            err("invalid-filter", "Invalid filter")
        );
        assert_eq!(
            client(r#"["set-filter",{"filter":"a"}]"#),
            err("invalid-filter", "Invalid filter")
        );
        assert_eq!(
            client(r#"["set-filter",{"filter":["a",""]}]"#),
            err(
                "invalid-channel",
                "Channel must be a non-empty string (max 100 chars)"
            )
        );
        let eleven: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
        assert_eq!(
            client(&serde_json::json!(["set-filter", {"filter": eleven}]).to_string()),
            err(
                "too-many-subscriptions",
                "Maximum 10 subscriptions per connection"
            )
        );
        assert_eq!(
            client(r#"["post",{"channel":"a","message":1}]"#),
            err("unauthorized", "Unauthorized operation")
        );
        assert_eq!(client(r#"["last-msg"]"#), Command::LastMsg);
        assert_eq!(client(r#"["whatever",1]"#), Command::Ignore);
        assert_eq!(client(r#"[7]"#), Command::Ignore);
        assert_eq!(
            sender(r#"["set-filter",{"filter":["a"]}]"#),
            Command::Ignore
        );
    }

    #[test]
    fn non_events_are_protocol_errors() {
        for bad in [r#"{}"#, r#"[]"#, r#"[null]"#, r#"["connect"]"#, "[", ""] {
            assert!(
                parse_event(bad.as_bytes(), Role::Client, 10).is_err(),
                "{bad}"
            );
        }
    }
}
