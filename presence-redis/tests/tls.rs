//! `rediss://` against a real TLS `redis-server` of this test's own (no
//! plaintext port, a certificate from a CA made here): with
//! `tls_root_cert` the store connects, calls round-trip and events flow,
//! every connection arriving on the TLS port; an app's own TLS client works
//! the same through `from_client`; the webpki roots alone refuse the
//! private CA, saying so; a certificate for another name is refused; a bad
//! `tls_root_cert`, or one with a URL that is not TLS, is refused by name.
#![cfg(feature = "tls")]

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use presence_core::{Error, Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_redis::testing::{self, TlsServer};
use presence_redis::{RedisConfig, RedisStore, redis};

/// Far longer than any bound configured here: a call still running then hangs.
const HANG: Duration = Duration::from_secs(60);

fn config(url: String, ca: Option<PathBuf>) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.key_prefix = testing::unique_prefix("tls");
    // Ample: a refusal must end a connect well before this bound, so that
    // an error saying the bound ran out means the refusal did not come.
    config.connect_timeout = Duration::from_secs(10);
    config.tls_root_cert = ca;
    config
}

async fn connect(config: RedisConfig) -> presence_core::Result<RedisStore> {
    tokio::time::timeout(HANG, RedisStore::connect(config))
        .await
        .expect("connect hung")
}

/// join / members / count / leave round-trip, and a subscriber gets the
/// join and the leave: the events connection works over TLS too. While
/// subscribed, every client of `server` is seen on its TLS port.
async fn round_trip(store: &RedisStore, server: &TlsServer) {
    let room = Topic::new("/tls/room").unwrap();
    let key = PresenceKey::new(&room, "alice", "tab-1").unwrap();
    let mut events = store.subscribe(&room).await.unwrap();
    let joined = store.join(&key, Meta::new()).await.unwrap();
    assert!(joined.first_for_member);
    let members = store.members(&room).await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].member.as_str(), "alice");
    assert_eq!(members[0].connections.len(), 1);
    let counts = store.count(&room).await.unwrap();
    assert_eq!((counts.members, counts.connections), (1, 1));
    match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        Ok(Some(Event::Join { entry, .. })) => assert_eq!(entry, joined.entry),
        other => panic!("expected the join over TLS, got {other:?}"),
    }
    all_clients_use_tls(store, server).await;
    let departure = store.leave(&key).await.unwrap().expect("alice was there");
    assert_eq!(departure.entry.key, key);
    assert!(departure.last_for_member);
    let counts = store.count(&room).await.unwrap();
    assert_eq!((counts.members, counts.connections), (0, 0));
    match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        Ok(Some(Event::Leave { departure: seen })) => assert_eq!(seen.entry.key, key),
        other => panic!("expected the leave over TLS, got {other:?}"),
    }
}

/// The server has no plaintext port (`--port 0`), so a client it lists came
/// in over TLS; every client connected to the TLS port, and among them the
/// store's events connection, holding a subscription.
async fn all_clients_use_tls(store: &RedisStore, server: &TlsServer) {
    let list = testing::client_list(store).await.unwrap();
    let clients: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        clients.len() >= 2,
        "the command and the events connections: {list}"
    );
    let tls_port = format!("laddr=127.0.0.1:{} ", server.port());
    for client in &clients {
        assert!(client.contains(&tls_port), "not on the TLS port: {client}");
    }
    assert!(
        clients.iter().any(|c| c.contains(" sub=1 ")),
        "the events connection holds its subscription over TLS: {list}"
    );
}

/// A plaintext client gets nowhere on the TLS port: the port really speaks
/// TLS, so the store's connections there were TLS.
async fn plaintext_is_refused(server: &TlsServer) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port())).unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(10), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a plaintext PING on the TLS port was answered: {attempt:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_private_ca_works_over_tls() {
    let Some(server) = testing::tls_server(&["localhost", "127.0.0.1"]) else {
        return;
    };
    assert!(server.url().starts_with("rediss://127.0.0.1:"));
    let store = connect(config(server.url(), Some(server.ca_file().to_owned())))
        .await
        .unwrap();
    round_trip(&store, &server).await;
    plaintext_is_refused(&server).await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_client_with_an_own_tls_client_works() {
    let Some(server) = testing::tls_server(&["localhost", "127.0.0.1"]) else {
        return;
    };
    let client = redis::Client::build_with_tls(
        server.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(server.ca_pem()),
        },
    )
    .unwrap();
    // The URL in the config is not used by from_client.
    let store = tokio::time::timeout(
        HANG,
        RedisStore::from_client(client, config("redis://unused".into(), None)),
    )
    .await
    .expect("from_client hung")
    .unwrap();
    round_trip(&store, &server).await;
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webpki_roots_do_not_trust_a_private_ca() {
    let Some(server) = testing::tls_server(&["localhost", "127.0.0.1"]) else {
        return;
    };
    let error = connect(config(server.url(), None)).await.unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    let text = error.chain().to_string();
    assert!(
        text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
        "{text}"
    );
    // The refusal ended it, not the connect_timeout bound (which would fail
    // saying the connection got no answer). Time itself is not asserted.
    assert!(!text.contains("got no answer"), "{text}");
    eprintln!("refused: {text}");

    // The app's own client without the CA fails the same way.
    let client = redis::Client::open(server.url()).unwrap();
    let error = tokio::time::timeout(
        HANG,
        RedisStore::from_client(client, config("redis://unused".into(), None)),
    )
    .await
    .expect("from_client hung")
    .unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    assert!(
        error.chain().to_string().contains("UnknownIssuer"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused() {
    // The certificate names localhost only; 127.0.0.1 is the same server by
    // a name the certificate does not cover.
    let Some(server) = testing::tls_server(&["localhost"]) else {
        return;
    };
    let ca = Some(server.ca_file().to_owned());
    let error = connect(config(server.url(), ca.clone())).await.unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    let text = error.chain().to_string();
    assert!(
        text.contains("invalid peer certificate") && text.contains("not valid for name"),
        "{text}"
    );
    assert!(!text.contains("UnknownIssuer"), "the CA is trusted: {text}");
    assert!(!text.contains("got no answer"), "{text}");
    eprintln!("refused: {text}");

    // By the name it has, the same server and CA are fine.
    let store = connect(config(server.url_via("localhost"), ca))
        .await
        .unwrap();
    round_trip(&store, &server).await;
    store.close().await.unwrap();
}

/// A file in the temp directory holding `text`, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(label: &str, text: &str) -> Self {
        let name = testing::unique_prefix(label).replace(':', "-");
        let path = std::env::temp_dir().join(format!("presence-redis-{name}.pem"));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A CA certificate in PEM, for the refusals that are not about the file.
fn some_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

/// The field and the reason of the refusal of `config`.
async fn refusal(config: RedisConfig) -> (&'static str, String) {
    match connect(config).await {
        Err(Error::InvalidInput { field, reason }) => (field, reason),
        Err(other) => panic!("expected InvalidInput, got {other:?}"),
        Ok(_) => panic!("expected InvalidInput, it connected"),
    }
}

#[tokio::test]
async fn a_bad_tls_root_cert_is_refused_by_name() {
    // No server is needed: each refusal comes before connecting (port 9 on
    // loopback has no Redis anyway).
    let url = "rediss://127.0.0.1:9/".to_owned();

    let missing = std::env::temp_dir().join("presence-redis-no-such-ca.pem");
    let (field, reason) = refusal(config(url.clone(), Some(missing))).await;
    assert_eq!(field, "tls_root_cert");
    assert!(reason.contains("cannot be read"), "{reason}");

    let key = rcgen::KeyPair::generate().unwrap();
    for (label, text) in [
        ("empty", String::new()),
        ("text", "not a certificate\n".to_owned()),
        ("key-only", key.serialize_pem()),
    ] {
        let file = TempFile::new(label, &text);
        let (field, reason) = refusal(config(url.clone(), Some(file.0.clone()))).await;
        assert_eq!(field, "tls_root_cert", "{label}");
        assert!(reason.contains("no PEM certificate"), "{label}: {reason}");
    }

    // A certificate block that is no certificate.
    let garbage = TempFile::new(
        "garbage",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let (field, reason) = refusal(config(url.clone(), Some(garbage.0.clone()))).await;
    assert_eq!(field, "tls_root_cert");
    assert!(reason.contains("not usable"), "{reason}");

    // A certificate block that is not even base64.
    let broken = TempFile::new(
        "broken",
        "-----BEGIN CERTIFICATE-----\n@@ not base64 @@\n-----END CERTIFICATE-----\n",
    );
    let (field, reason) = refusal(config(url.clone(), Some(broken.0.clone()))).await;
    assert_eq!(field, "tls_root_cert");
    assert!(reason.contains("is not PEM"), "{reason}");

    // A good CA file with servers that are not TLS.
    let ca = TempFile::new("ca", &some_ca_pem());
    let ca_path = Some(ca.0.clone());
    for url in [
        "redis://127.0.0.1:9/",
        "redis+cluster://127.0.0.1:9,127.0.0.1:10/",
    ] {
        let (field, reason) = refusal(config(url.into(), ca_path.clone())).await;
        assert_eq!(field, "tls_root_cert", "{url}");
        assert!(reason.contains("rediss://"), "{url}: {reason}");
    }
    let mut nodes = RedisConfig::cluster(["rediss://127.0.0.1:9", "redis://127.0.0.1:10"]);
    nodes.tls_root_cert = ca_path.clone();
    let (field, reason) = refusal(nodes).await;
    assert_eq!(field, "tls_root_cert");
    assert!(reason.contains("redis://127.0.0.1:10"), "{reason}");

    // A cluster's bad file is refused by the same name.
    let mut nodes = RedisConfig::cluster(["rediss://127.0.0.1:9"]);
    nodes.tls_root_cert = Some(garbage.0.clone());
    assert_eq!(refusal(nodes).await.0, "tls_root_cert");
    let mut cluster = config("rediss+cluster://127.0.0.1:9/".into(), None);
    cluster.tls_root_cert = Some(std::env::temp_dir().join("presence-redis-no-such-ca.pem"));
    assert_eq!(refusal(cluster).await.0, "tls_root_cert");
}
