//! PostgreSQL as a message source (issue 12), against a real throwaway
//! PostgreSQL: `tuning/sql/rodan_notify.sql`, installed by a table owner
//! without superuser, fires on a real table through NOTIFY into a
//! ws4redis client with Rodan's exact payloads; `{"channel","data"}`
//! payloads; PostgreSQL restarted: the source LISTENs again.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres_server::PostgresServer;
use common::*;
use tungstenite::protocol::Message;

fn start(pg: &PostgresServer) -> Server {
    let conninfo = pg.conninfo();
    Server::start_with(
        &[],
        &[
            ("RINGCAST_PROTOCOLS_WS4REDIS_PREFIX", "rodan"),
            ("RINGCAST_SOURCES_POSTGRES_ENABLED", "true"),
            ("RINGCAST_SOURCES_POSTGRES_URL", conninfo.as_str()),
            ("RINGCAST_SOURCES_POSTGRES_LISTEN", "rodan,ringcast"),
            ("RINGCAST_SOURCES_POSTGRES_CHANNEL", "rodan:broadcast:rodan"),
        ],
    )
}

fn wait_connected(server: &Server, reconnects: u64) {
    let want = format!("postgres: connected (reconnects {reconnects},");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, h) = server.http("GET", "/health", "", &[]);
        if h.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "health never said {want:?}: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn next_text(ws: &mut Ws) -> String {
    loop {
        match read_message(ws).expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

fn sql_file() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tuning/sql/rodan_notify.sql"
    ))
}

#[test]
fn rodan_trigger_fires_through_postgres_into_a_websocket_client() {
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    // Rodan's tables belong to an ordinary role: it installs the trigger.
    pg.psql(
        "postgres",
        "CREATE ROLE rodan LOGIN; GRANT CREATE ON SCHEMA public TO rodan",
    );
    pg.psql(
        "rodan",
        "CREATE TABLE rodan_workflowrun (uuid uuid PRIMARY KEY, project_id uuid, name text); \
         CREATE TABLE rodan_project (uuid uuid PRIMARY KEY, name text)",
    );
    pg.psql_file("rodan", sql_file());
    pg.psql(
        "rodan",
        "CREATE TRIGGER object_post_insert_notify AFTER INSERT OR UPDATE OR DELETE \
         ON rodan_workflowrun FOR EACH ROW EXECUTE FUNCTION rodan_object_notify('rodan'); \
         CREATE TRIGGER object_post_insert_notify AFTER INSERT OR UPDATE OR DELETE \
         ON rodan_project FOR EACH ROW EXECUTE FUNCTION rodan_object_notify('rodan')",
    );
    let server = start(&pg);
    wait_connected(&server, 0);
    let mut rodan = server.ws("/ws/rodan?subscribe-broadcast&publish-broadcast&echo");
    std::thread::sleep(Duration::from_millis(200));
    pg.psql(
        "rodan",
        "INSERT INTO rodan_workflowrun VALUES ('6b1f0e2a-9c3d-4e5f-8a7b-6c5d4e3f2a1b', \
         '3f0c2a9e-7c1d-4f7e-9a55-0d2b1c9e8f10', 'run'); \
         UPDATE rodan_workflowrun SET name = 'x'; \
         INSERT INTO rodan_project VALUES ('00000000-0000-0000-0000-000000000001', 'p'); \
         DELETE FROM rodan_workflowrun",
    );
    let with_project = |status: &str| {
        format!(
            r#"{{"status": "{status}", "project": "3f0c2a9e-7c1d-4f7e-9a55-0d2b1c9e8f10", "model": "workflowrun", "uuid": "6b1f0e2a9c3d4e5f8a7b6c5d4e3f2a1b"}}"#
        )
    };
    assert_eq!(next_text(&mut rodan), with_project("created"));
    assert_eq!(next_text(&mut rodan), with_project("updated"));
    assert_eq!(
        next_text(&mut rodan),
        r#"{"status": "created", "model": "project", "uuid": "00000000000000000000000000000001"}"#
    );
    assert_eq!(next_text(&mut rodan), with_project("deleted"));
    // A {"channel","data"} payload goes to its own channel.
    let mut other = server.ws("/ws/other?subscribe-broadcast");
    std::thread::sleep(Duration::from_millis(200));
    pg.psql(
        "rodan",
        r#"SELECT pg_notify('ringcast', '{"channel": "rodan:broadcast:other", "data": {"a": [1, 2]}}')"#,
    );
    assert_eq!(next_text(&mut other), r#"{"a":[1,2]}"#);
}

#[test]
fn postgres_restarted_the_source_listens_again() {
    let Some(mut pg) = PostgresServer::start() else {
        return;
    };
    let server = start(&pg);
    wait_connected(&server, 0);
    let mut rodan = server.ws("/ws/rodan?subscribe-broadcast");
    std::thread::sleep(Duration::from_millis(200));
    pg.psql("postgres", r#"SELECT pg_notify('rodan', '{"n": 1}')"#);
    assert_eq!(next_text(&mut rodan), r#"{"n": 1}"#);
    pg.restart();
    wait_connected(&server, 1);
    pg.psql("postgres", r#"SELECT pg_notify('rodan', '{"n": 2}')"#);
    assert_eq!(next_text(&mut rodan), r#"{"n": 2}"#);
    assert_silent(&mut rodan, Duration::from_millis(300));
}
