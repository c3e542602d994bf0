//! The status page (`/`) and `/status.json` of a running pgoutbox: the live values, in the
//! JSON and rendered by headless Chromium (DOM checks, and a screenshot written to the
//! target directory); no secret in either; 405 to anything but GET; 200 idle connections to
//! the listener neither stall streaming nor the page.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const SECRET: &str = "n4ts-s3cret";

/// One raw HTTP/1.0 request: the status code and the body.
async fn request(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

async fn status(port: u16) -> serde_json::Value {
    let (code, body) = request(port, "GET", "/status.json").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Headless Chromium: the page's DOM once its script ran.
fn chromium(args: &[&str], url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; scripts/prereqs.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_live_values_and_no_secret() {
    let env = Env::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let nats_url = format!("nats://pgoutbox:{SECRET}@127.0.0.1:4222");
    let mut child = env.spawn_binary(
        &dir.path().join("log"),
        &[
            ("PGOUTBOX_METRICS_ADDR", &format!("127.0.0.1:{port}")),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
            ("PGOUTBOX_NATS_URL", &nats_url),
        ],
    );
    env.wait_streaming().await;
    let txs = workload(0, 40);
    let n = txs.iter().map(Vec::len).sum::<usize>();
    env.commit(&txs).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;

    // The JSON: the slot's positions as PostgreSQL has them, what was delivered, no secret.
    let s = status(port).await;
    let text = s.to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert_eq!(s["slot"], "pgoutbox");
    assert_eq!(s["ready"], true, "{text}");
    assert_eq!(s["role"], "streaming (leader)");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    let confirmed: pgoutbox::Lsn = s["positions"]["confirmed"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(confirmed >= end, "{confirmed} < {end}");
    let kafka = &s["destinations"][0];
    assert_eq!(kafka["destination"], "kafka");
    assert_eq!(kafka["delivered"], n as u64);
    assert!(s["settings"]
        .as_str()
        .unwrap()
        .contains("nats_url = \"nats://pgoutbox:***@"));
    assert_eq!(s["dead_letters"], 0);
    assert!(s["last_error"].is_null(), "{text}");

    // Anything but GET is refused.
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/status.json"),
        ("DELETE", "/metrics"),
    ] {
        assert_eq!(request(port, method, path).await.0, 405, "{method} {path}");
    }

    // Rendered: the DOM after the page's script fetched the JSON.
    let url = format!("http://127.0.0.1:{port}/");
    let dom = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &url))
        .await
        .unwrap();
    assert!(dom.contains("data-loaded=\"yes\""), "{dom}");
    let confirmed_now = status(port).await["positions"]["confirmed"].clone();
    assert!(
        dom.contains("<dd id=\"slot\">pgoutbox</dd>")
            && dom.contains("<td>kafka</td>")
            && dom.contains(&format!("<td>{n}</td>"))
            && dom.contains(&format!(
                "<dd id=\"version\">{}</dd>",
                env!("CARGO_PKG_VERSION")
            )),
        "{dom}"
    );
    assert!(
        confirmed_now
            .as_str()
            .is_some_and(|c| dom.contains(&format!("<dd id=\"confirmed\">{c}</dd>"))),
        "confirmed {confirmed_now} in {dom}"
    );
    assert!(!dom.contains(SECRET));
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let url = format!("http://127.0.0.1:{port}/");
    tokio::task::spawn_blocking(move || chromium(&[&arg, "--window-size=1280,1000"], &url))
        .await
        .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} ({size} bytes)",
        shot.display()
    );
    eprintln!("status page screenshot: {} ({size} bytes)", shot.display());

    // 200 connections that never finish a request: streaming and the page go on.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /status.json HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    let t = Instant::now();
    let more = workload(1000, 300);
    let ids: HashSet<String> = more.iter().flatten().map(|e| e.id.clone()).collect();
    env.commit(&more).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    let took = t.elapsed();
    read_until_all(&env.reader(), &ids, Duration::from_secs(30)).await;
    assert_eq!(status(port).await["ready"], true);
    eprintln!(
        "with 200 idle connections open: {} events committed and confirmed in {took:.1?}, /status.json answering",
        ids.len()
    );
    drop(idle);

    // `pgoutbox status` reads the same facts from the running instance.
    let addr = format!("127.0.0.1:{port}");
    let (ok, out, _) = cli_with(
        &["status"],
        &env.pg.url(),
        env.kafka.bootstrap_servers(),
        &[("PGOUTBOX_METRICS_ADDR", &addr)],
    )
    .await;
    assert!(ok, "{out}");
    let total = n + ids.len();
    assert!(
        out.contains(&format!("instance             {addr}: ready (streaming)"))
            && out.contains("role                 streaming (leader)")
            && out.contains(&format!("delivered            kafka: {total} ("))
            && out.contains("last error           none since start"),
        "{out}"
    );
    child.start_kill().unwrap();
}
