//! No output shows a secret: with several server URLs, each with a password of its own, for
//! PostgreSQL, NATS, RabbitMQ and Kafka's SASL password, every command's output (`config`,
//! `check` for each destination, `run` at debug level while nothing can be reached) is
//! searched for each password.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Ports nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

const SECRETS: [&str; 9] = [
    "pg-pw-one",
    "nats-pw-one",
    "nats-pw-two",
    "nats-tok-three",
    "amqp-pw-one",
    "amqp-pw-two",
    "amqp-pw-three",
    "kafka-sasl-pw",
    "pg-pw-query",
];

fn settings(destination: &str) -> Vec<(&'static str, String)> {
    let p = closed_port;
    vec![
        (
            "PGOUTBOX_POSTGRES_URL",
            format!(
                "postgres://pgoutbox:pg-pw-one@127.0.0.1:{},127.0.0.1:{}/app?connect_timeout=1",
                p(),
                p()
            ),
        ),
        ("PGOUTBOX_DESTINATION", destination.into()),
        (
            "PGOUTBOX_NATS_URL",
            format!(
                "nats://u:nats-pw-one@127.0.0.1:{}, nats://u:nats-pw-two@127.0.0.1:{},nats://nats-tok-three@127.0.0.1:{}",
                p(),
                p(),
                p()
            ),
        ),
        (
            "PGOUTBOX_RABBITMQ_URL",
            format!(
                "amqp://guest:amqp-pw-one@127.0.0.1:{}/%2f,amqp://guest:amqp-pw-two@127.0.0.1:{}/%2f,amqp://guest:amqp-pw-three@127.0.0.1:{}/%2f",
                p(),
                p(),
                p()
            ),
        ),
        ("PGOUTBOX_KAFKA_BROKERS", format!("127.0.0.1:{}", p())),
        (
            "PGOUTBOX_KAFKA_PROPERTIES",
            "security.protocol=SASL_PLAINTEXT;sasl.mechanism=PLAIN;sasl.username=u;sasl.password=kafka-sasl-pw".into(),
        ),
        ("RUST_LOG", "debug".into()),
    ]
}

/// `pgoutbox ARGS` with `env`, stopped after `limit`: stdout and stderr together.
fn output(args: &[&str], env: &[(&'static str, String)], limit: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(out).unwrap() + &std::fs::read_to_string(err).unwrap()
}

#[test]
fn no_command_prints_a_password() {
    let mut printed = Vec::new();
    for destination in ["kafka", "nats", "rabbitmq"] {
        let env = settings(destination);
        for args in [&["config"][..], &["check"], &["run"], &["setup"]] {
            let text = output(args, &env, Duration::from_secs(8));
            for s in SECRETS {
                if text.contains(s) {
                    printed.push(format!(
                        "`pgoutbox {}` ({destination}) printed {s:?}:\n{text}",
                        args.join(" ")
                    ));
                }
            }
            // Something was said, so the test looked at real output.
            assert!(!text.trim().is_empty(), "{args:?} printed nothing");
        }
    }
    // The query-string form of a PostgreSQL password.
    let mut env = settings("nats");
    env[0].1 = format!(
        "postgres://127.0.0.1:{}/app?user=u&password=pg-pw-query&connect_timeout=1",
        closed_port()
    );
    for args in [&["config"][..], &["check"], &["run"]] {
        let text = output(args, &env, Duration::from_secs(5));
        if text.contains("pg-pw-query") {
            printed.push(format!(
                "`pgoutbox {}` printed the query password:\n{text}",
                args.join(" ")
            ));
        }
    }
    assert!(printed.is_empty(), "{}", printed.join("\n\n"));
}
