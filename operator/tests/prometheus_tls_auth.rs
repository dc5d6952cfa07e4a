//! The operator's Prometheus client against a real Prometheus (the Debian package `make deps`
//! installs) started with a web config that requires TLS and basic auth, as managed and
//! multi-tenant Prometheus setups do. The certificate is issued by a test CA for
//! `prometheus.test` only, and Prometheus listens on 127.0.0.1, so reaching it needs the CA from
//! the spec and `tls.serverName`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use embedding_rollout_operator::{
    crd::{BasicAuth, PrometheusSpec, PrometheusTls, SecretKeyRef},
    prometheus::{Prometheus, QueryError, Reading},
    prometheus_access::{assemble, Access, Objects},
};

const USER: &str = "rollout";
const PASSWORD: &str = "correct horse battery staple";
const SERVER_NAME: &str = "prometheus.test";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Server {
    address: String,
    ca_pem: String,
    _child: tokio::process::Child,
}

fn workdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prometheus-tls-auth");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and a server certificate it signs for `prometheus.test`.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "embedding-rollout test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![SERVER_NAME.to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

async fn start() -> Server {
    let dir = workdir();
    let (ca, cert, key) = certificates();
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {USER}: {hash}\n",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1s\n",
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--web.config.file={}",
            dir.join("web.yml").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the `prometheus` binary (Debian package prometheus; `make deps` installs it)");
    Server {
        address: format!("https://127.0.0.1:{port}"),
        ca_pem: ca,
        _child: child,
    }
}

/// The spec a user writes, with the Secret and ConfigMap it names.
fn access(server: &Server, password: Option<&str>, server_name: Option<&str>, ca: bool) -> Access {
    let spec = PrometheusSpec {
        address: server.address.clone(),
        basic_auth: password.map(|_| BasicAuth {
            username: SecretKeyRef {
                name: "prometheus-auth".into(),
                key: "username".into(),
            },
            password: SecretKeyRef {
                name: "prometheus-auth".into(),
                key: "password".into(),
            },
        }),
        tls: Some(PrometheusTls {
            ca_config_map: ca.then(|| embedding_rollout_operator::crd::ConfigMapKeyRef {
                name: "prometheus-ca".into(),
                key: "ca.crt".into(),
            }),
            ca_secret: None,
            server_name: server_name.map(str::to_string),
        }),
        ..PrometheusSpec::default()
    };
    let mut objects = Objects::default();
    objects.secrets.insert(
        "prometheus-auth".into(),
        Ok(Some(BTreeMap::from([
            ("username".to_string(), USER.as_bytes().to_vec()),
            (
                "password".to_string(),
                password.unwrap_or_default().as_bytes().to_vec(),
            ),
        ]))),
    );
    objects.config_maps.insert(
        "prometheus-ca".into(),
        Ok(Some(BTreeMap::from([(
            "ca.crt".to_string(),
            server.ca_pem.as_bytes().to_vec(),
        )]))),
    );
    assemble(&spec, "production", &objects).unwrap()
}

async fn query(server: &Server, access: &Access) -> Result<Reading, QueryError> {
    Prometheus::connect(&server.address, access, Duration::from_secs(5))
        .unwrap()
        .instant("vector(1)")
        .await
}

#[tokio::test]
async fn tls_and_basic_auth_from_the_spec_reach_prometheus_and_wrong_ones_are_named() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start().await;
    let good = access(&server, Some(PASSWORD), Some(SERVER_NAME), true);

    // Prometheus takes a moment to listen: wait for the first answer (not Unreachable).
    let deadline = Instant::now() + READY_TIMEOUT;
    let first = loop {
        match query(&server, &good).await {
            Err(QueryError::Unreachable(m))
                if Instant::now() < deadline && m.contains("refused") =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => break other,
        }
    };
    assert_eq!(
        first,
        Ok(Reading::Value(1.0)),
        "the right credentials and CA"
    );

    // A wrong password: a clear, typed refusal (the analysis is Inconclusive, never a pass).
    let wrong = query(
        &server,
        &access(&server, Some("hunter2"), Some(SERVER_NAME), true),
    )
    .await;
    assert_eq!(wrong, Err(QueryError::Unauthorized(401)));
    let shown = Prometheus::describe(&server.address, &wrong.unwrap_err());
    println!("{shown}");
    assert!(
        shown.contains("refused the credentials (HTTP 401)"),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter2") && !shown.contains(PASSWORD),
        "{shown}"
    );

    // No credentials at all: the same refusal.
    let none = query(&server, &access(&server, None, Some(SERVER_NAME), true)).await;
    assert_eq!(none, Err(QueryError::Unauthorized(401)));

    // The certificate names prometheus.test, not 127.0.0.1: without serverName it is refused.
    match query(&server, &access(&server, Some(PASSWORD), None, true)).await {
        Err(QueryError::Tls(m)) => {
            println!("refused: {m}");
            assert!(m.to_lowercase().contains("certificate"), "{m}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    // Without the CA the chain is unknown, whatever the name.
    match query(
        &server,
        &access(&server, Some(PASSWORD), Some(SERVER_NAME), false),
    )
    .await
    {
        Err(QueryError::Tls(m)) => {
            println!("refused: {m}");
            assert!(m.to_lowercase().contains("certificate"), "{m}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
}
