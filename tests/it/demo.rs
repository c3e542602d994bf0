//! `pgoutbox demo` runs the whole flow and cleans up after itself, also when interrupted.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn demo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgoutbox"));
    c.arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Whether a postgres server is listening on this port (the demo prints its URL).
fn postgres_running_on(port: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("postgres .*-p {port} ")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn port_of(stdout: &str) -> String {
    let url = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("postgres://"))
        .expect("demo prints its Postgres URL");
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_streams_sample_transactions_and_cleans_up() {
    run_demo(&[]).await;
}

/// The same flow to a throwaway server of the installed nats-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_against_nats() {
    let stdout = run_demo(&["--destination", "nats"]).await;
    assert!(
        stdout.contains("with stream OUTBOX (outbox.event.>)"),
        "{stdout}"
    );
    assert!(
        !std::process::Command::new("pgrep")
            .args(["-f", &format!("nats-server .*-p {} ", nats_port(&stdout))])
            .status()
            .unwrap()
            .success(),
        "nats-server left running"
    );
}

/// The same flow to a throwaway node of the installed rabbitmq-server, which it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_against_rabbitmq() {
    let stdout = run_demo(&["--destination", "rabbitmq"]).await;
    assert!(
        stdout.contains("with topic exchange outbox → queue outbox.demo (outbox.event.#)"),
        "{stdout}"
    );
    let port = stdout
        .split_whitespace()
        .find(|w| w.starts_with("amqp://"))
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.split('/').next())
        .expect("demo prints the AMQP URL")
        .to_owned();
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "the RabbitMQ node left running"
    );
}

fn nats_port(stdout: &str) -> String {
    let url = stdout
        .split_whitespace()
        .find(|w| w.starts_with("nats://"))
        .expect("demo prints the NATS URL");
    url.rsplit(':').next().unwrap().to_owned()
}

/// Runs the demo (6 transactions) with `extra` arguments; checks what it printed.
async fn run_demo(extra: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        demo(&[&["--transactions", "6", "--interval-ms", "20"], extra].concat()).output(),
    )
    .await
    .expect("demo finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 6 transactions, every third with two events: 8 events, each printed with its latency.
    assert!(
        stdout.contains("✔ 8 events from 6 transactions delivered; the rolled-back transaction's event never appeared"),
        "{stdout}"
    );
    let printed = stdout
        .lines()
        .filter(|l| l.starts_with("outbox.event."))
        .count();
    assert_eq!(printed, 8, "{stdout}");
    assert!(stdout
        .lines()
        .filter(|l| l.starts_with("outbox.event."))
        .all(|l| l.ends_with(" ms")));
    assert!(
        !postgres_running_on(&port_of(&stdout)),
        "postgres left running"
    );
    stdout.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cleans_up_on_ctrl_c() {
    let mut child = demo(&["--transactions", "1000", "--interval-ms", "200"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    // Wait until events are flowing, then interrupt.
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            stdout.push_str(&l);
            stdout.push('\n');
            if l.starts_with("outbox.event.") {
                break;
            }
        }
    })
    .await
    .expect("events flow");
    let port = port_of(&stdout);
    assert!(postgres_running_on(&port));
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("demo exits after Ctrl-C")
        .unwrap();
    while let Ok(Some(l)) = lines.next_line().await {
        stdout.push_str(&l);
        stdout.push('\n');
    }
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        !postgres_running_on(&port),
        "postgres left running after Ctrl-C"
    );
}
