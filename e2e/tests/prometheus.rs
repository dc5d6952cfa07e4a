//! The harness's Prometheus scrapes what the file_sd file lists, every second, and can be stopped and
//! started again with its data (the "Prometheus down" scenario). Needs the Debian `prometheus` package
//! (`make deps`); fails, never skips, without it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use e2e::prometheus::{write_file_sd, FileSdGroup, Prometheus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn workdir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("prometheus")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Serves a fixed exposition-format body on every request, like an embedder's /metrics.
async fn serve_metrics(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match conn.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const METRICS: &str = "# TYPE embedding_requests_total counter\n\
embedding_requests_total{service=\"candle\",model=\"all-MiniLM-L6-v2\",code=\"200\"} 42\n";

#[tokio::test]
async fn scrapes_file_sd_targets_and_survives_a_restart() {
    let dir = workdir("restart");
    let targets = dir.join("targets.json");
    let mut prometheus = Prometheus::start(&dir, &targets)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // A target added after start is picked up (file_sd watches the file).
    let addr = serve_metrics(METRICS).await;
    write_file_sd(
        &targets,
        &[FileSdGroup {
            targets: vec![addr.clone()],
            labels: BTreeMap::from([("deployment".into(), "akidb-candle".into())]),
        }],
    )
    .unwrap();
    eventually("target scraped and up", Duration::from_secs(20), || async {
        prometheus.healthy_targets().await.unwrap_or_default() == vec![addr.clone()]
    })
    .await;
    let result = prometheus
        .query("embedding_requests_total{service=\"candle\"}")
        .await
        .expect("query");
    assert_eq!(result[0]["value"][1], "42");
    assert_eq!(result[0]["metric"]["deployment"], "akidb-candle");

    // Down: queries fail, as the operator will see them.
    prometheus.stop().await;
    assert!(!prometheus.is_running());
    assert!(prometheus.query("up").await.is_err());

    // Up again on the same address with the samples from before the stop.
    prometheus.start_again().await.expect("restart");
    let before = prometheus
        .query("count_over_time(embedding_requests_total[5m])")
        .await
        .expect("query after restart");
    let samples: f64 = before[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(samples >= 1.0, "samples from before the restart: {before}");
}
