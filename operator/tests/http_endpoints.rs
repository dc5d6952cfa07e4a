//! The metrics/health server answers as probes and Prometheus expect.

use embedding_rollout_operator::{
    metrics::Metrics,
    server::{serve, Readiness},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf[9..12].parse().unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

#[tokio::test]
async fn healthz_is_always_ok_and_readyz_follows_readiness() {
    let readiness = Readiness::default();
    let (addr, _h) = serve(
        "127.0.0.1:0".parse().unwrap(),
        Metrics::new(),
        readiness.clone(),
    )
    .await
    .unwrap();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    readiness.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
}

#[tokio::test]
async fn metrics_endpoint_serves_the_operator_metrics() {
    let m = Metrics::new();
    m.set_weight("default", "r1", 50);
    let (addr, _h) = serve("127.0.0.1:0".parse().unwrap(), m, Readiness::default())
        .await
        .unwrap();
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains(r#"embedding_rollout_canary_weight{namespace="default",rollout="r1"} 50"#),
        "{body}"
    );
}

#[tokio::test]
async fn a_taken_port_is_an_error_not_a_panic() {
    let (addr, _h) = serve(
        "127.0.0.1:0".parse().unwrap(),
        Metrics::new(),
        Readiness::default(),
    )
    .await
    .unwrap();
    assert!(serve(addr, Metrics::new(), Readiness::default())
        .await
        .is_err());
}
