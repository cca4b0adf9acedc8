//! pasvd's structured log: `--log-format json` writes one JSON object per line and event,
//! with the field names of docs/LOGS.md, and the xferlog alongside.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use support::{Ftp, WAIT};

#[tokio::test]
async fn json_log_has_one_object_per_session_event_and_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("f.bin"), support::pattern(3_000, 1)).unwrap();
    let xferlog = dir.path().join("xferlog");
    let (lo, hi) = support::port_block_from(27_020, 4);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pasvd"))
        .args(["--listen", "127.0.0.1:0", "--pasv-address", "127.0.0.1"])
        .args(["--pasv-min-port", &lo.to_string()])
        .args(["--pasv-max-port", &hi.to_string()])
        .arg("--anonymous-write")
        .arg("--root")
        .arg(&root)
        .arg("--xferlog")
        .arg(&xferlog)
        .args(["--log-format", "json"])
        .env("PASVD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pasvd starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, first_line) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut stderr = child.stderr.take().unwrap();
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        let _ = log_tx.send(all);
    });
    let line = first_line.recv_timeout(WAIT).expect("first line in time");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));

    let (mut ftp, _) = Ftp::connect(addr).await;
    ftp.expect("USER anonymous", 331).await;
    ftp.expect("PASS guest@", 230).await;
    ftp.expect("TYPE I", 200).await;
    assert_eq!(ftp.retr("f.bin").await.len(), 3_000);
    let done = ftp.upload("STOR up.bin", &support::pattern(1_234, 2)).await;
    assert_eq!(done.code().get(), 226, "{done}");
    ftp.expect("QUIT", 221).await;
    assert!(ftp.closed().await);

    let pid = Pid::from_child(&child);
    kill_process(pid, Signal::TERM).expect("SIGTERM");
    let Ok(log) = log_rx.recv_timeout(WAIT) else {
        let _ = kill_process(pid, Signal::KILL);
        panic!("pasvd did not end in time");
    };
    assert!(child.wait().expect("exit status").success());
    let log = String::from_utf8(log).expect("UTF-8 log");

    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let find = |message: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["message"] == message)
            .collect::<Vec<_>>()
    };
    for e in &events {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(e.get(key).is_some(), "{key} missing: {e}");
        }
    }
    let opened = find("session opened");
    assert_eq!(opened.len(), 1, "{log}");
    assert_eq!(opened[0]["session"], 1);
    assert!(opened[0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let login = find("login");
    assert_eq!(login.len(), 1, "{log}");
    assert_eq!(login[0]["user"], "anonymous");
    assert_eq!(login[0]["write"], true);
    assert_eq!(find("session closed").len(), 1, "{log}");

    let transfers = find("transfer");
    assert_eq!(transfers.len(), 2, "{log}");
    let (retr, stor) = (transfers[0], transfers[1]);
    for (t, command, direction, bytes, closer, path) in [
        (retr, "RETR", "download", 3_000, "server", "/f.bin"),
        (stor, "STOR", "upload", 1_234, "client", "/up.bin"),
    ] {
        assert_eq!(t["level"], "INFO");
        assert_eq!(t["session"], 1);
        assert_eq!(t["peer"], "127.0.0.1");
        assert_eq!(t["user"], "anonymous");
        assert_eq!(t["command"], command);
        assert_eq!(t["direction"], direction);
        assert_eq!(t["path"], path);
        assert_eq!(t["bytes"], bytes);
        assert_eq!(t["closer"], closer);
        assert_eq!(t["result"], "complete");
        assert!(t.get("error").is_none(), "{t}");
        assert!(t["duration_us"].is_u64(), "{t}");
        let port = t["port"].as_u64().unwrap();
        assert!((u64::from(lo)..=u64::from(hi)).contains(&port), "{t}");
    }

    // The xferlog is written alongside, one line per file transfer.
    let xferlog = fs::read_to_string(&xferlog).unwrap();
    assert_eq!(xferlog.lines().count(), 2, "{xferlog}");
}
