//! The floor responder on loopback: what it serves in both modes, and that `--root` confines
//! as pasvd does (its figures stand for pasvd's confinement calls only if it makes them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A started floor, killed when dropped.
struct Floor {
    child: Child,
    port: u16,
}

impl Floor {
    fn start(args: &[&str]) -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_floor"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("floor starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("floor prints its address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Floor { child, port }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control connection that reads one reply per command.
struct Control(BufReader<TcpStream>);

impl Control {
    fn open(port: u16) -> Control {
        let mut c = Control(BufReader::new(
            TcpStream::connect(("127.0.0.1", port)).expect("connect"),
        ));
        assert!(c.reply().starts_with("220"));
        for cmd in ["USER anonymous", "PASS x", "TYPE I"] {
            c.send(cmd);
        }
        c
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("reply");
        line
    }

    fn send(&mut self, cmd: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())
            .expect("send");
        self.reply()
    }

    /// PASV, the data connection, `RETR name`: the first reply and the bytes received.
    fn retr(&mut self, name: &str) -> (String, Vec<u8>) {
        let reply = self.send("PASV");
        let nums: Vec<u16> = reply[reply.find('(').expect("(") + 1..reply.find(')').expect(")")]
            .split(',')
            .map(|n| n.parse().expect("number"))
            .collect();
        let mut data = TcpStream::connect(("127.0.0.1", nums[4] * 256 + nums[5])).expect("data");
        // A failure shows as an error, not a hang.
        data.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let first = self.send(&format!("RETR {name}"));
        let mut bytes = Vec::new();
        if first.starts_with("150") {
            data.read_to_end(&mut bytes).expect("data read");
            assert!(self.reply().starts_with("226"));
        }
        (first, bytes)
    }
}

/// A fresh folder `NAME` with `root/` (two files, a link out of it, a directory) and a file
/// beside `root/`.
fn tree(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("floor-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("small.bin"), vec![7u8; 1024]).expect("write");
    std::fs::write(
        root.join("big.bin"),
        (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>(),
    )
    .expect("write");
    std::fs::write(dir.join("secret"), b"outside").expect("write");
    std::os::unix::fs::symlink("../secret", root.join("link")).expect("symlink");
    std::fs::create_dir(root.join("sub")).expect("mkdir");
    dir
}

#[test]
fn the_confined_floor_serves_files_beneath_its_root_and_nothing_else() {
    let dir = tree("confined");
    let root = dir.join("root");
    let floor = Floor::start(&[
        "--pasv",
        "31800-31809",
        "--root",
        root.to_str().expect("utf-8"),
    ]);
    let mut c = Control::open(floor.port);
    // A connection queued on the port before the PASV that lends it (the floor lends its
    // first port first) is reset at the grant, not taken for the transfer.
    let mut early = TcpStream::connect(("127.0.0.1", 31800)).expect("early connection");
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for name in ["small.bin", "/big.bin", "small.bin"] {
        let (first, bytes) = c.retr(name);
        assert!(first.starts_with("150"), "{name}: {first}");
        let want = std::fs::read(root.join(name.trim_start_matches('/'))).expect("read");
        assert_eq!(bytes, want, "{name}");
    }
    let mut got = Vec::new();
    assert!(
        early.read_to_end(&mut got).is_err() || got.is_empty(),
        "the early connection got {} bytes",
        got.len()
    );
    for name in ["../secret", "link", "sub", "missing"] {
        let (first, bytes) = c.retr(name);
        assert!(first.starts_with("550"), "{name}: {first}");
        assert!(bytes.is_empty(), "{name}");
        // The port goes back after a refusal: the next transfer still works.
        let (first, bytes) = c.retr("small.bin");
        assert!(first.starts_with("150"), "after {name}: {first}");
        assert_eq!(bytes.len(), 1024, "after {name}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_plain_floor_sends_its_one_file_for_any_name() {
    let dir = tree("plain");
    let file = dir.join("root").join("small.bin");
    let floor = Floor::start(&[
        "--pasv",
        "31810-31819",
        "--file",
        file.to_str().expect("utf-8"),
    ]);
    let mut c = Control::open(floor.port);
    let (first, bytes) = c.retr("anything");
    assert!(first.starts_with("150"), "{first}");
    assert_eq!(bytes, vec![7u8; 1024]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_floor_refuses_bad_arguments() {
    for args in [
        &["--pasv", "1-2"][..],
        &["--pasv", "2-1", "--file", "x"],
        &["--bogus"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_floor"))
            .args(args)
            .output()
            .expect("floor runs");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("floor: "),
            "{args:?}"
        );
    }
}
