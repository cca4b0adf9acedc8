//! pasvd's Prometheus endpoint, scraped over HTTP on loopback after a scripted session whose
//! every count is known.

mod support;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use pasv_pool::QuarantineScope;
use pasv_tools::server::{Config, Server};
use support::{Ftp, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one HTTP/1.1 request for `path` (closing the connection) and returns the status
/// line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the metrics endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The samples of an exposition: `name{labels}` (as written) to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{l}: {e}")),
            };
            (key.to_owned(), value)
        })
        .collect()
}

#[track_caller]
fn expect(samples: &HashMap<String, f64>, key: &str, want: f64) {
    match samples.get(key) {
        Some(&v) => assert_eq!(v, want, "{key}"),
        None => panic!("{key} missing from the scrape"),
    }
}

/// Every metric name the Grafana dashboard (docs/grafana/pasvd.json) queries is a sample
/// name in the scrape (with its `_total` or `_bucket` suffix as queried).
#[track_caller]
fn dashboard_names_exist(samples: &HashMap<String, f64>) {
    let text = include_str!("../../../docs/grafana/pasvd.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(e)) => out.push(e),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    let names: std::collections::BTreeSet<&str> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("pasvd_"))
        })
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let scraped: std::collections::BTreeSet<&str> = samples
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k))
        .collect();
    for name in names {
        assert!(
            scraped.contains(name),
            "dashboard queries {name}, not in the scrape"
        );
    }
}

#[tokio::test]
async fn the_endpoint_counts_a_scripted_session_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = support::pattern(5_000, 3);
    fs::write(dir.path().join("f.bin"), &file).unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    let (lo, hi) = support::port_block_from(27_000, 4);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    // Every server-side close cools its port for 60 s, no waiting for a port, two sessions.
    config.quarantine = Some(QuarantineScope::Port);
    config.time_wait = Duration::from_secs(60);
    config.pasv_wait = Duration::ZERO;
    config.accept_timeout = Duration::from_secs(2);
    config.max_clients = 2;
    config.metrics = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = Server::bind(config).await.expect("server binds");
    let addr = server.local_addr();
    let metrics = server.metrics_addr().expect("metrics listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    // Session A: a failed login, a login, three downloads, two uploads.
    let (mut a, greeting) = Ftp::connect(addr).await;
    assert_eq!(greeting.code().get(), 220);
    a.expect("USER bob", 331).await;
    a.expect("PASS wrong", 530).await;
    a.expect("USER anonymous", 331).await;
    a.expect("PASS guest@example.invalid", 230).await;
    a.expect("TYPE I", 200).await;
    for _ in 0..3 {
        assert_eq!(a.retr("f.bin").await, file);
    }
    let body = support::pattern(7_000, 5);
    for name in ["u1", "u2"] {
        let done = a.upload(&format!("STOR {name}"), &body).await;
        assert_eq!(done.code().get(), 226, "{done}");
    }

    // Session B takes the last free port (three are cooling); A is refused, with the time
    // left of the first quarantine as its hint.
    let mut b = Ftp::login(addr).await;
    b.pasv().await;
    let refused = a.cmd("PASV").await;
    assert_eq!(refused.code().get(), 425, "{refused}");
    // B never connects: its RETR ends in 425 at the accept timeout.
    let started = b.cmd("RETR f.bin").await;
    assert_eq!(started.code().get(), 150, "{started}");
    let timed_out = b.reply().await;
    assert_eq!(timed_out.code().get(), 425, "{timed_out}");
    // A third session is over max_clients.
    let (_c, refusal) = Ftp::connect(addr).await;
    assert_eq!(refusal.code().get(), 421, "{refusal}");

    let (status, body_404) = http_get(metrics, "/").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}: {body_404}");
    let (status, text) = http_get(metrics, "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let s = samples(&text);
    dashboard_names_exist(&s);
    let n = file.len() as f64;
    for (key, want) in [
        ("pasvd_sessions", 2.0),
        ("pasvd_sessions_opened_total", 2.0),
        ("pasvd_connections_refused_total{reason=\"limit\"}", 1.0),
        ("pasvd_connections_refused_total{reason=\"banned\"}", 0.0),
        ("pasvd_logins_total{result=\"ok\"}", 2.0),
        ("pasvd_logins_total{result=\"failed\"}", 1.0),
        ("pasvd_logins_total{result=\"banned\"}", 0.0),
        ("pasvd_login_bans_total", 0.0),
        // A: USER PASS USER PASS TYPE, 5 x (PASV + transfer), PASV; B: USER PASS TYPE
        // PASV RETR.
        ("pasvd_commands_total", 21.0),
        ("pasvd_replies_total{class=\"1xx\"}", 6.0),
        ("pasvd_replies_total{class=\"2xx\"}", 17.0),
        ("pasvd_replies_total{class=\"3xx\"}", 3.0),
        ("pasvd_replies_total{class=\"4xx\"}", 2.0),
        ("pasvd_replies_total{class=\"5xx\"}", 1.0),
        (
            "pasvd_transfers_total{direction=\"download\",result=\"complete\"}",
            3.0,
        ),
        (
            "pasvd_transfers_total{direction=\"download\",result=\"no_connection\"}",
            1.0,
        ),
        (
            "pasvd_transfers_total{direction=\"upload\",result=\"complete\"}",
            2.0,
        ),
        (
            "pasvd_transfers_total{direction=\"upload\",result=\"network_error\"}",
            0.0,
        ),
        (
            "pasvd_transfer_bytes_total{direction=\"download\"}",
            3.0 * n,
        ),
        ("pasvd_transfer_bytes_total{direction=\"upload\"}", 14_000.0),
        ("pasvd_data_accept_timeouts_total{stage=\"transfer\"}", 1.0),
        ("pasvd_data_accept_timeouts_total{stage=\"idle\"}", 0.0),
        // The kernel's filter refuses foreign SYNs before any session sees them.
        ("pasvd_data_intruders_dropped_total", 0.0),
        ("pasvd_pool_free_ports{address=\"127.0.0.1\"}", 1.0),
        ("pasvd_pool_leased_ports{address=\"127.0.0.1\"}", 0.0),
        ("pasvd_pool_cooling_ports{address=\"127.0.0.1\"}", 3.0),
        ("pasvd_pool_peak_leased", 1.0),
        ("pasvd_pool_acquisitions_total", 6.0),
        ("pasvd_pool_releases_total{closer=\"server\"}", 3.0),
        ("pasvd_pool_releases_total{closer=\"client\"}", 2.0),
        ("pasvd_pool_releases_total{closer=\"never_connected\"}", 1.0),
        ("pasvd_pool_releases_total{closer=\"reset\"}", 0.0),
        ("pasvd_pool_refusals_total{cause=\"cooling\"}", 1.0),
        ("pasvd_pool_refusals_total{cause=\"all_leased\"}", 0.0),
        ("pasvd_pool_refusal_hint_seconds_count", 1.0),
        ("pasvd_pool_refusal_hint_seconds_bucket{le=\"45.0\"}", 0.0),
        ("pasvd_pool_refusal_hint_seconds_bucket{le=\"60.0\"}", 1.0),
        ("pasvd_pool_wait_seconds_count{outcome=\"refused\"}", 1.0),
        ("pasvd_pool_wait_seconds_count{outcome=\"leased\"}", 0.0),
        ("pasvd_pool_bind_in_use_total", 0.0),
        ("pasvd_pool_ports", 4.0),
        ("pasvd_pool_time_wait_seconds", 60.0),
        ("pasvd_pool_server_close_ratio", 0.5),
    ] {
        expect(&s, key, want);
    }
    // The capacity model from the measured hold time: N / (h + f·T), T charged port-wide.
    let h = s["pasvd_pool_hold_seconds_mean"];
    assert!(h > 0.0 && h < 60.0, "hold {h}");
    let rate_max = 4.0 / (h + 0.5 * 60.0);
    for scope in ["configured", "port"] {
        let got = s[&format!("pasvd_pool_rate_max{{scope=\"{scope}\"}}")];
        assert!((got - rate_max).abs() < 1e-9 * rate_max, "{scope}: {got}");
    }
    let headroom = s["pasvd_pool_headroom"];
    let rate = s["pasvd_pool_lease_rate"];
    assert!(rate > 0.0, "{rate}");
    assert!((headroom - (rate_max - rate)).abs() < 1e-9, "{headroom}");

    drop((a, b));
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("server stops in time")
        .expect("server task")
        .expect("server runs");
    // The endpoint closes with the server.
    assert!(TcpStream::connect(metrics).await.is_err());
}
