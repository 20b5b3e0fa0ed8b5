//! Postgres over TLS (feature `tls`), against a server of this test's own
//! with `ssl = on` and a certificate from a CA made here: `verify-full`
//! and `verify-ca` connect and events flow over TLS, a certificate from
//! another CA is refused saying so, a host name the certificate does not
//! name is refused by `verify-full`, and `require` against a server
//! without TLS fails at once. An app's own connector works too.
#![cfg(all(feature = "testing", feature = "tls"))]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use presence_core::{Error, Event, Meta, PresenceKey, PresenceStore, Topic};
use presence_postgres::testing::{self, ServerOptions, TestServer, TlsFiles};
use presence_postgres::{PostgresConfig, PostgresStore, deadpool_postgres};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;

/// Far longer than any bound configured here: a call still running then hangs.
const HANG: Duration = Duration::from_secs(60);

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for `db.internal` only, signed by `ca`.
fn server_files(ca: &Ca) -> TlsFiles {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["db.internal".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "db.internal");
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    TlsFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn write_pem(label: &str, pem: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.pem", testing::unique_schema(label)));
    std::fs::write(&path, pem).unwrap();
    path
}

async fn connect(url: String) -> presence_core::Result<PostgresStore> {
    let mut config = PostgresConfig::from_url(&url)?;
    config.schema = testing::unique_schema("tls");
    config.pool_size = 2;
    tokio::time::timeout(HANG, PostgresStore::connect(config))
        .await
        .expect("connect hung")
}

/// Every client connection of the server (the store's pool and listener) is TLS.
async fn all_connections_use_tls(store: &PostgresStore) {
    let client = store.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
    let (all, tls): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 2, "the pool and the listener are connected ({all})");
    assert_eq!(all, tls, "every connection is TLS");
}

async fn events_flow(store: &PostgresStore) {
    let room = Topic::new("room").unwrap();
    let mut events = store.subscribe(&room).await.unwrap();
    let joined = store
        .join(
            &PresenceKey::new("room", "alice", "tab").unwrap(),
            Meta::new(),
        )
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        Ok(Some(Event::Join { entry, .. })) => assert_eq!(entry, joined.entry),
        other => panic!("expected the join over TLS, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_as_sslmode_says() {
    if let Err(why) = testing::can_start_servers() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let ours = ca("presence test CA");
    let theirs = ca("another CA");
    let server = TestServer::start(ServerOptions {
        tls: Some(server_files(&ours)),
        ..ServerOptions::default()
    })
    .unwrap();
    let port = server.port();
    let ca_file = write_pem("ca", &ours.pem);
    let other_ca_file = write_pem("other_ca", &theirs.pem);
    let ca = ca_file.display();

    // verify-full: the name in the certificate, reached at 127.0.0.1.
    let store = connect(format!(
        "host=db.internal hostaddr=127.0.0.1 port={port} user=presence dbname=postgres \
         sslmode=verify-full sslrootcert={ca}"
    ))
    .await
    .unwrap();
    all_connections_use_tls(&store).await;
    events_flow(&store).await;
    store.close().await.unwrap();

    // verify-ca: the chain is checked, the name is not.
    let store = connect(format!(
        "postgres://presence@127.0.0.1:{port}/postgres?sslmode=verify-ca&sslrootcert={ca}"
    ))
    .await
    .unwrap();
    events_flow(&store).await;
    store.close().await.unwrap();

    // verify-full refuses a host the certificate does not name.
    let error = connect(format!(
        "postgres://presence@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    ))
    .await
    .unwrap_err();
    let text = error.chain().to_string();
    assert!(
        text.contains("certificate") && text.contains("name"),
        "{text}"
    );

    // A certificate from another CA is refused, saying so.
    for mode in ["verify-ca", "verify-full", "require"] {
        let error = connect(format!(
            "host=db.internal hostaddr=127.0.0.1 port={port} user=presence dbname=postgres \
             sslmode={mode} sslrootcert={}",
            other_ca_file.display()
        ))
        .await
        .unwrap_err();
        assert!(matches!(error, Error::Backend { .. }), "{error:?}");
        let text = error.chain().to_string();
        assert!(
            text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
            "{mode}: {text}"
        );
    }

    // require without a root: encrypted, not verified (libpq's meaning).
    let store = connect(format!(
        "postgres://presence@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .await
    .unwrap();
    all_connections_use_tls(&store).await;
    store.close().await.unwrap();

    // The app's own connector, for the pool and the listener alike.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let own = format!(
        "host=db.internal hostaddr=127.0.0.1 port={port} user=presence dbname=postgres sslmode=require"
    );
    let mut config = PostgresConfig::from_url(&own).unwrap();
    config.schema = testing::unique_schema("own_tls");
    let store = PostgresStore::connect_with_tls(
        config,
        presence_postgres::tokio_postgres_rustls::MakeRustlsConnect::new(client.clone()),
    )
    .await
    .unwrap();
    all_connections_use_tls(&store).await;
    events_flow(&store).await;
    store.close().await.unwrap();

    // The app's own TLS pool: the listener uses the connector handed in
    // (it used to connect in plaintext, and the open waited 30 s).
    let pg: presence_postgres::tokio_postgres::Config = own.parse().unwrap();
    let tls = presence_postgres::tokio_postgres_rustls::MakeRustlsConnect::new(client);
    let manager = deadpool_postgres::Manager::from_config(
        pg.clone(),
        tls.clone(),
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();
    let mut config = PostgresConfig::new(format!("postgres://presence@127.0.0.1:{port}/postgres"));
    config.schema = testing::unique_schema("app_pool_tls");
    config.listen_timeout = Duration::from_secs(5);
    let store = tokio::time::timeout(
        HANG,
        PostgresStore::from_pool_with_tls(pool, pg, config, tls),
    )
    .await
    .expect("from_pool_with_tls hung")
    .unwrap();
    all_connections_use_tls(&store).await;
    events_flow(&store).await;
    store.close().await.unwrap();
    let _ = std::fs::remove_file(&ca_file);
    let _ = std::fs::remove_file(&other_ca_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_at_once() {
    let Some(url) = testing::server_url() else {
        return;
    };
    let started = std::time::Instant::now();
    let error = connect(format!("{url}?sslmode=require&connect_timeout=30"))
        .await
        .unwrap_err();
    let text = error.chain().to_string();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    assert!(text.contains("TLS"), "{text}");
    // Fast: the server's refusal ended it, not the 30 s bound (a wait that
    // ran out would fail naming the timeout). Time itself is not asserted.
    assert!(
        !text.contains("timed out"),
        "the refusal, not a timeout: {text}"
    );
    eprintln!("refused after {:?}: {text}", started.elapsed());
}
