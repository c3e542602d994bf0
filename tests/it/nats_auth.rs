//! NATS credentials against servers that require them: a user and password in the URL, a
//! token in the URL, an NKey seed file (`nats_nkey_file`) and a `.creds` file (JWT, operator
//! mode). Each is let in (`check` passes, and the relay streams where JetStream is on for the
//! user); a wrong one makes `check` fail with one line naming the setting to correct, and no
//! output ever shows a password, token or seed.

use std::time::Duration;

use crate::common::nats::{self as js};
use crate::common::pki;
use crate::common::{Env, Event};
use base64::Engine;
use pgoutbox::embedded::TempNats;

async fn start(conf: String) -> TempNats {
    tokio::task::spawn_blocking(move || TempNats::start_configured(&conf))
        .await
        .unwrap()
        .expect("start nats-server")
}

/// `pgoutbox check` against `nats` with the settings `extra`; fails the test if its output
/// shows any of `secrets`.
async fn check(
    env: &Env,
    url: &str,
    extra: &[(&'static str, String)],
    secrets: &[&str],
) -> (bool, String) {
    let mut settings = vec![
        ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
        ("PGOUTBOX_DESTINATION", "nats".into()),
        ("PGOUTBOX_NATS_URL", url.to_owned()),
    ];
    settings.extend(extra.iter().cloned());
    let (ok, text) = pki::check(&settings).await;
    for s in secrets {
        assert!(!text.contains(s), "check printed the secret {s:?}:\n{text}");
    }
    (ok, text)
}

/// The line of `check`'s output about reaching NATS.
fn reach_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.contains("NATS reachable"))
        .unwrap_or(text)
}

/// Creates the outbox stream as a client logged in by `opts`, streams three events through
/// the relay configured by `cfg`, and reads them back.
async fn streams(
    env: &Env,
    opts: async_nats::ConnectOptions,
    bare_url: &str,
    mut cfg: pgoutbox::Config,
) {
    let client = opts.connect(bare_url).await.unwrap();
    let jsx = async_nats::jetstream::new(client);
    jsx.create_stream(async_nats::jetstream::stream::Config {
        name: js::STREAM.into(),
        subjects: js::SUBJECTS.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    cfg.destination = pgoutbox::config::DestinationKind::Nats;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let events: Vec<Event> = (1..=3).map(|i| Event::new(i, "order", "k")).collect();
    env.commit(std::slice::from_ref(&events)).await;
    let stream = jsx.get_stream(js::STREAM).await.unwrap();
    crate::common::wait_for("three events stored", Duration::from_secs(30), || async {
        let mut s = stream.clone();
        s.info().await.is_ok_and(|i| i.state.messages == 3)
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_in_the_url() {
    let env = Env::start().await;
    let server =
        start(r#"authorization { user: "pgoutbox", password: "right-pw-4711" }"#.into()).await;
    let port = server.port();
    let good = format!("nats://pgoutbox:right-pw-4711@127.0.0.1:{port}");
    let bad = format!("nats://pgoutbox:wrong-pw-0815@127.0.0.1:{port}");
    let secrets = ["right-pw-4711", "wrong-pw-0815"];

    let (ok, text) = check(&env, &bad, &[], &secrets).await;
    let line = reach_line(&text);
    assert!(
        !ok && line.contains("✘") && line.contains("correct them in nats_url"),
        "{text}"
    );
    let (ok, text) = check(&env, &format!("nats://127.0.0.1:{port}"), &[], &secrets).await;
    assert!(
        !ok && reach_line(&text).contains("the server requires credentials"),
        "{text}"
    );
    let (ok, text) = check(&env, &good, &[], &secrets).await;
    assert!(ok || reach_line(&text).contains("✔"), "{text}");

    let mut cfg = env.config();
    cfg.nats.url = good;
    let opts = async_nats::ConnectOptions::new()
        .user_and_password("pgoutbox".into(), "right-pw-4711".into());
    streams(&env, opts, &format!("nats://127.0.0.1:{port}"), cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_url() {
    let env = Env::start().await;
    let server = start(r#"authorization { token: "s3cr3t-t0ken" }"#.into()).await;
    let port = server.port();
    let secrets = ["s3cr3t-t0ken", "not-the-t0ken"];
    let (ok, text) = check(
        &env,
        &format!("nats://not-the-t0ken@127.0.0.1:{port}"),
        &[],
        &secrets,
    )
    .await;
    assert!(
        !ok && reach_line(&text).contains("correct it in nats_url (nats://token@host:port)"),
        "{text}"
    );
    let good = format!("nats://s3cr3t-t0ken@127.0.0.1:{port}");
    let (_, text) = check(&env, &good, &[], &secrets).await;
    assert!(reach_line(&text).contains("✔"), "{text}");

    let mut cfg = env.config();
    cfg.nats.url = good;
    let opts = async_nats::ConnectOptions::new().token("s3cr3t-t0ken".into());
    streams(&env, opts, &format!("nats://127.0.0.1:{port}"), cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file() {
    let env = Env::start().await;
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let server = start(format!(
        "authorization {{ users = [ {{ nkey: {:?} }} ] }}",
        user.public_key()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let seed_of = |k: &nkeys::KeyPair, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, k.seed().unwrap() + "\n").unwrap();
        path.display().to_string()
    };
    let (good, bad) = (seed_of(&user, "user.nk"), seed_of(&stranger, "stranger.nk"));
    let seeds = [user.seed().unwrap(), stranger.seed().unwrap()];
    let secrets: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let url = server.url();

    let (ok, text) = check(&env, &url, &[("PGOUTBOX_NATS_NKEY_FILE", bad)], &secrets).await;
    assert!(
        !ok && reach_line(&text).contains("the server refused the NKey of nats_nkey_file"),
        "{text}"
    );
    let (_, text) = check(
        &env,
        &url,
        &[("PGOUTBOX_NATS_NKEY_FILE", good.clone())],
        &secrets,
    )
    .await;
    assert!(reach_line(&text).contains("✔"), "{text}");

    let mut cfg = env.config();
    cfg.nats.url = url.clone();
    cfg.nats.nkey_file = Some(good.into());
    let opts = async_nats::ConnectOptions::new().nkey(user.seed().unwrap());
    streams(&env, opts, &url, cfg).await;
}

/// A signed NATS JWT (`ed25519-nkey`) with `claims`, issued by `issuer` for `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{subject}"),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = b64.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = b64.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

/// A `.creds` file's text: the user's JWT and NKey seed.
fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file_in_operator_mode() {
    let env = Env::start().await;
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let other_account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "O",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "A",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2, "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}}),
    );
    let user_claims = serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1});
    let user_jwt = jwt(&account, &user.public_key(), "U", user_claims.clone());
    // Signed by an account this server does not know.
    let stranger_jwt = jwt(&other_account, &user.public_key(), "U", user_claims);
    let server = start(format!(
        "operator: {operator_jwt:?}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{ {}: {account_jwt:?}, {}: {system_jwt:?} }}\n",
        system.public_key(),
        account.public_key(),
        system.public_key()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let seed = user.seed().unwrap();
    let write = |name: &str, jwt: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, creds(jwt, &seed)).unwrap();
        path.display().to_string()
    };
    let (good, bad) = (
        write("user.creds", &user_jwt),
        write("stranger.creds", &stranger_jwt),
    );
    let url = server.url();
    let (ok, text) = check(
        &env,
        &url,
        &[("PGOUTBOX_NATS_CREDENTIALS_FILE", bad)],
        &[&seed],
    )
    .await;
    assert!(
        !ok && reach_line(&text).contains("nats_credentials_file"),
        "{text}"
    );
    let (_, text) = check(
        &env,
        &url,
        &[("PGOUTBOX_NATS_CREDENTIALS_FILE", good.clone())],
        &[&seed],
    )
    .await;
    assert!(reach_line(&text).contains("✔"), "{text}");

    let mut cfg = env.config();
    cfg.nats.url = url.clone();
    cfg.nats.credentials_file = Some(good.clone().into());
    let opts = async_nats::ConnectOptions::with_credentials_file(&good)
        .await
        .unwrap();
    streams(&env, opts, &url, cfg).await;
}
