//! Thor mode against the ws4redis endpoint as Rodan configures it: every
//! connection completes its -n message-then-frame cycles on the heartbeat,
//! and receives every publication on `rodan:broadcast:rodan`.
mod common;

#[test]
fn thor_cycles_run_on_the_heartbeat_and_publications_arrive() {
    // The engine inherits these (its configuration through the environment).
    std::env::set_var("RINGCAST_PROTOCOLS_WS4REDIS_PREFIX", "rodan");
    std::env::set_var("RINGCAST_PROTOCOLS_WS4REDIS_HEARTBEAT", "--heartbeat--");
    let engine = common::Engine::start(&[]);
    let (code, r, text) = common::loadgen_report(
        &engine,
        &["-a", "200", "-n", "3", "--protocol", "ws4redis", "-d", "30"],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["scenario"], "thor", "{text}");
    assert_eq!(r["connections_open"], 200, "{text}");
    assert_eq!(r["thor_cycles"], 600, "{text}");
    assert_eq!(r["publications"], 3, "{text}");
    assert_eq!(r["expected_deliveries"], 600, "{text}");
    assert_eq!(r["deliveries"], 600, "{text}");
    for k in ["lost", "duplicates", "reordered", "unexpected_closes"] {
        assert_eq!(r[k], 0, "{k}: {text}");
    }
}
