//! The pasvd binary as an operator runs it: the switch to `--run-as` (checked in every
//! thread through /proc), the warning when it stays root, what reaches its log and xferlog
//! from hostile clients, and the demo directory. The privilege tests need root and say so
//! when they skip.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rustix::process::{geteuid, kill_process, Pid, Signal};
use support::{Ftp, WAIT};

/// pasvd as a child process with its stdout and stderr captured; killed on drop.
struct Daemon {
    child: Child,
    first_line: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Daemon {
    /// Starts pasvd on 127.0.0.1:0 with a passive block of its own, `args` and `env`.
    fn spawn(args: &[&OsStr], env: &[(&str, &OsStr)]) -> Daemon {
        Daemon::spawn_by(Command::new(env!("CARGO_BIN_EXE_pasvd")), args, env)
    }

    /// [`Daemon::spawn`] through `command`, which runs pasvd (a wrapper such as `taskset`).
    fn spawn_by(mut command: Command, args: &[&OsStr], env: &[(&str, &OsStr)]) -> Daemon {
        let (lo, hi) = support::port_block_from(26_600, 10);
        command
            .args(["--listen", "127.0.0.1:0", "--pasv-address", "127.0.0.1"])
            .args(["--pasv-min-port", &lo.to_string()])
            .args(["--pasv-max-port", &hi.to_string()])
            .args(args)
            .env("PASVD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("pasvd starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            all
        });
        Daemon {
            child,
            first_line,
            stderr: Some(stderr),
        }
    }

    /// The control address from the first line of stdout; `None` if pasvd ended first.
    fn listening(&self) -> Option<SocketAddr> {
        let line = self
            .first_line
            .recv_timeout(WAIT)
            .expect("a line or EOF in time");
        line.trim().strip_prefix("listening on ")?.parse().ok()
    }

    fn pid(&self) -> Pid {
        Pid::from_child(&self.child)
    }

    /// Waits for pasvd to end (bounded) and returns its status and everything it logged.
    fn wait(mut self) -> (ExitStatus, Vec<u8>) {
        let pid = self.pid();
        let (tx, rx) = mpsc::channel();
        let stderr = self.stderr.take().expect("stderr reader");
        std::thread::spawn(move || {
            let _ = tx.send(stderr.join().expect("stderr reader"));
        });
        let Ok(log) = rx.recv_timeout(WAIT) else {
            let _ = kill_process(pid, Signal::KILL);
            panic!("pasvd did not end in time");
        };
        let status = self.child.wait().expect("exit status");
        (status, log)
    }

    /// SIGTERM (a clean shutdown that flushes the log), then [`Daemon::wait`].
    fn stop(self) -> (ExitStatus, Vec<u8>) {
        kill_process(self.pid(), Signal::TERM).expect("SIGTERM");
        self.wait()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root(test: &str) -> bool {
    let root = geteuid().is_root();
    if !root {
        eprintln!("skipped {test}: it needs root (switching accounts, files of another user)");
    }
    root
}

/// The uid and gid of `nobody` from /etc/passwd.
fn nobody_ids() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("a nobody account")
        .split(':')
        .collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// One thread's credentials as /proc shows them.
struct ThreadCredentials {
    name: String,
    /// Real, effective, saved and file system uid.
    uids: Vec<u32>,
    /// The same four gids.
    gids: Vec<u32>,
    groups: Vec<u32>,
}

/// The credentials of every thread of `pid`.
fn thread_credentials(pid: Pid) -> Vec<ThreadCredentials> {
    let tasks = PathBuf::from(format!("/proc/{}/task", pid.as_raw_nonzero()));
    let mut threads = Vec::new();
    for task in fs::read_dir(&tasks).unwrap() {
        let Ok(status) = fs::read_to_string(task.unwrap().path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().map(|n| n.parse().unwrap()).collect())
                .unwrap_or_default()
        };
        let name = status.lines().next().unwrap_or_default().to_owned();
        threads.push(ThreadCredentials {
            name,
            uids: field("Uid:"),
            gids: field("Gid:"),
            groups: field("Groups:"),
        });
    }
    threads
}

/// How many threads the process has besides its main thread and the log flusher: the
/// multi-threaded runtime's workers (no blocking-pool thread runs in these tests). Counted,
/// not named: a thread that has not run yet still carries the process's name.
fn runtime_workers(pid: Pid) -> usize {
    let tasks = PathBuf::from(format!("/proc/{}/task", pid.as_raw_nonzero()));
    let threads = fs::read_dir(&tasks).unwrap().count();
    assert!(threads >= 2, "{threads} threads: no log flusher?");
    threads - 2
}

/// Serves a root with one file, started by `command` with `args`: the runtime's worker
/// threads once it listens, after a download.
async fn workers_serving(command: Command, args: &[&str]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.txt"), b"threads\n").unwrap();
    let mut all: Vec<&OsStr> = vec!["--root".as_ref(), dir.path().as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    let daemon = Daemon::spawn_by(command, &all, &[]);
    let addr = daemon.listening().expect("pasvd listens");
    let mut ftp = Ftp::login(addr).await;
    assert_eq!(ftp.retr("f.txt").await, b"threads\n");
    ftp.expect("QUIT", 221).await;
    let workers = runtime_workers(daemon.pid());
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status}");
    workers
}

#[tokio::test]
async fn the_runtime_runs_the_threads_asked_for() {
    let pasvd = || Command::new(env!("CARGO_BIN_EXE_pasvd"));
    // One thread: the single-threaded runtime, no worker threads at all.
    assert_eq!(workers_serving(pasvd(), &["--threads", "1"]).await, 0);
    assert_eq!(workers_serving(pasvd(), &["--threads", "3"]).await, 3);
}

#[tokio::test]
async fn by_default_the_runtime_has_a_thread_per_cpu_it_may_use() {
    // Pinned to one CPU, as the benchmark and `taskset` users run it: one thread.
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0", env!("CARGO_BIN_EXE_pasvd")]);
    assert_eq!(workers_serving(pinned, &[]).await, 0);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let expected = if cpus == 1 { 0 } else { cpus };
    let unpinned = Command::new(env!("CARGO_BIN_EXE_pasvd"));
    assert_eq!(workers_serving(unpinned, &[]).await, expected);
}

#[test]
fn threads_above_one_with_busy_polling_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(
        &[
            "--root".as_ref(),
            dir.path().as_os_str(),
            "--busy-poll-us".as_ref(),
            "100".as_ref(),
            "--threads".as_ref(),
            "2".as_ref(),
        ],
        &[],
    );
    assert_eq!(daemon.listening(), None);
    let (status, log) = daemon.wait();
    assert!(!status.success());
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("busy polling runs on one thread"), "{log}");
}

fn assert_all_threads_run_as(pid: Pid, uid: u32, gid: u32) -> usize {
    let threads = thread_credentials(pid);
    for t in &threads {
        assert_eq!(t.uids, [uid; 4], "{}: Uid", t.name);
        assert_eq!(t.gids, [gid; 4], "{}: Gid", t.name);
        assert_eq!(t.groups, [gid], "{}: Groups", t.name);
    }
    threads.len()
}

/// A directory every account may enter and read.
fn public_dir(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn run_as_switches_every_thread_and_still_serves() {
    if !is_root("run_as_switches_every_thread_and_still_serves") {
        return;
    }
    let (uid, gid) = nobody_ids();
    let dir = tempfile::tempdir().unwrap();
    public_dir(dir.path());
    let root = dir.path().join("root");
    public_dir(&root);
    fs::write(root.join("hello.txt"), b"hello, nobody\n").unwrap();
    fs::set_permissions(root.join("hello.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    // The xferlog lives where only root may go: it is opened before the switch.
    let logs = dir.path().join("logs");
    fs::create_dir(&logs).unwrap();
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o700)).unwrap();
    let xferlog = logs.join("xferlog");
    let daemon = Daemon::spawn(
        &[
            "--run-as".as_ref(),
            "nobody".as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
            "--xferlog".as_ref(),
            xferlog.as_os_str(),
        ],
        &[],
    );
    let addr = daemon.listening().expect("pasvd listens");
    // The main thread, the log flusher and the runtime's workers all exist by now.
    let threads = assert_all_threads_run_as(daemon.pid(), uid, gid);
    assert!(threads >= 3, "only {threads} threads");

    // A login (its password check runs on a blocking-pool thread started now), a listing
    // and a download.
    let mut ftp = Ftp::login(addr).await;
    let listing = ftp.listing("NLST").await;
    assert_eq!(listing, b"hello.txt\r\n");
    assert_eq!(ftp.retr("hello.txt").await, b"hello, nobody\n");
    assert_all_threads_run_as(daemon.pid(), uid, gid);
    ftp.expect("QUIT", 221).await;

    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}");
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("serving as an unprivileged account user=nobody"),
        "{log}"
    );
    assert!(!log.contains("running as root"), "{log}");
    let xferlog = fs::read_to_string(&xferlog).unwrap();
    assert!(
        xferlog.contains(" /hello.txt b _ o a anonymous "),
        "{xferlog}"
    );
}

#[test]
fn run_as_an_unknown_account_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(
        &[
            "--run-as".as_ref(),
            "pasvd-no-such-account".as_ref(),
            "--root".as_ref(),
            dir.path().as_os_str(),
        ],
        &[],
    );
    assert_eq!(daemon.listening(), None);
    let (status, log) = daemon.wait();
    assert!(!status.success());
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains(
            "run_as pasvd-no-such-account: no user \"pasvd-no-such-account\" in /etc/passwd"
        ),
        "{log}"
    );
}

#[test]
fn run_as_refuses_a_root_the_account_cannot_read() {
    if !is_root("run_as_refuses_a_root_the_account_cannot_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    public_dir(dir.path());
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    let daemon = Daemon::spawn(
        &[
            "--run-as".as_ref(),
            "nobody".as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
        ],
        &[],
    );
    assert_eq!(daemon.listening(), None);
    let (status, log) = daemon.wait();
    assert!(!status.success());
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("Permission denied"), "{log}");
    assert!(log.contains("(as nobody)"), "{log}");
}

#[test]
fn root_without_run_as_warns() {
    if !is_root("root_without_run_as_warns") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(&["--root".as_ref(), dir.path().as_os_str()], &[]);
    assert!(daemon.listening().is_some());
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}");
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("WARN") && log.contains("running as root: set run_as (--run-as)"),
        "{log}"
    );
}

/// Control characters other than the line's own LF, and DEL.
fn raw_controls(text: &[u8]) -> Vec<u8> {
    text.iter()
        .copied()
        .filter(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
        .collect()
}

#[tokio::test]
async fn network_bytes_reach_the_log_and_the_xferlog_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    // A name that moves the cursor, rings, sets a colour, and is not UTF-8.
    let hostile: &[u8] = b"e\x1b[31mvil\x07\x01\x0b\t\x1b]0;title\x07\xff.txt";
    fs::write(root.join(OsStr::from_bytes(hostile)), b"payload").unwrap();
    let xferlog = dir.path().join("xferlog");
    let daemon = Daemon::spawn(
        &[
            "--root".as_ref(),
            root.as_os_str(),
            "--xferlog".as_ref(),
            xferlog.as_os_str(),
        ],
        &[("PASVD_LOG", "debug".as_ref())],
    );
    let addr = daemon.listening().expect("pasvd listens");

    let (mut ftp, _) = Ftp::connect(addr).await;
    let user: &[u8] = b"USER r\x1b[2J\x1b[Hoot\x07\x01\x0b\x1b[8m\xfe";
    assert_eq!(ftp.cmd_bytes(user).await.code().get(), 331);
    assert_eq!(ftp.cmd("PASS x").await.code().get(), 530);
    // NUL and a bare CR are refused by the framer, before any log line could carry them.
    assert_eq!(ftp.cmd_bytes(b"USER a\0b").await.code().get(), 500);
    assert_eq!(ftp.cmd_bytes(b"USER a\rb").await.code().get(), 500);
    ftp.expect("USER anonymous", 331).await;
    ftp.expect("PASS guest@", 230).await;
    ftp.expect("TYPE I", 200).await;
    let mut data = ftp.open_data(false).await;
    let mut retr = b"RETR ".to_vec();
    for &b in hostile {
        // 0xFF is Telnet's IAC: sent doubled (RFC 854).
        retr.push(b);
        if b == 0xff {
            retr.push(b);
        }
    }
    assert_eq!(ftp.cmd_bytes(&retr).await.code().get(), 150);
    assert_eq!(support::read_all(&mut data).await, b"payload");
    assert_eq!(ftp.reply().await.code().get(), 226);
    ftp.expect("QUIT", 221).await;
    let (status, log) = daemon.stop();
    assert!(status.success(), "{status}");

    assert_eq!(raw_controls(&log), b"", "{}", String::from_utf8_lossy(&log));
    let log = String::from_utf8(log).expect("the log is UTF-8");
    let shown_user = r"r\x1b[2J\x1b[Hoot\x07\x01\x0b\x1b[8m\xfe";
    let shown_path = r"e\x1b[31mvil\x07\x01\x0b\t\x1b]0;title\x07\xff.txt";
    assert!(log.contains("login failed session=1 peer="), "{log}");
    assert!(log.contains(&format!("user={shown_user}")), "{log}");
    assert!(log.contains(&format!("command=USER {shown_user}")), "{log}");
    assert!(log.contains(&format!("command=RETR {shown_path}")), "{log}");
    assert!(log.contains(&format!("path=/{shown_path}")), "{log}");

    let xferlog = fs::read(&xferlog).unwrap();
    assert_eq!(raw_controls(&xferlog), b"");
    let xferlog = String::from_utf8(xferlog).expect("the xferlog is UTF-8");
    let line = xferlog.lines().next().expect("one transfer logged");
    assert_eq!(line.split_whitespace().count(), 18, "{line}");
    assert!(
        line.contains(&format!(" /{shown_path} b _ o a anonymous ")),
        "{line}"
    );
}

/// pasvd without --root, its temporary directory (where the demo lives) set to `tmp`.
fn spawn_demo(tmp: &Path) -> Daemon {
    Daemon::spawn(&[], &[("TMPDIR", tmp.as_os_str())])
}

#[tokio::test]
async fn the_demo_directory_is_created_private_and_served() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = spawn_demo(tmp.path());
    let addr = daemon.listening().expect("pasvd serves the demo");
    let mut ftp = Ftp::login(addr).await;
    assert_eq!(ftp.retr("hello.txt").await, b"Hello from pasvd!\n");
    ftp.expect("QUIT", 221).await;
    let (status, _) = daemon.stop();
    assert!(status.success());
    let demo = tmp.path().join("pasvd-demo");
    let mode = fs::symlink_metadata(&demo).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // Started again, it takes its own directory back.
    let daemon = spawn_demo(tmp.path());
    assert!(daemon.listening().is_some());
    assert!(daemon.stop().0.success());
}

#[test]
fn a_demo_path_planted_by_someone_else_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("pasvd-demo");
    // A symlink to a directory of the server's user: not followed, nothing written there.
    let target = tmp.path().join("my-documents");
    fs::create_dir(&target).unwrap();
    symlink(&target, &demo).unwrap();
    let daemon = spawn_demo(tmp.path());
    assert_eq!(daemon.listening(), None);
    let (status, log) = daemon.wait();
    assert!(!status.success());
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("symbolic link"), "{log}");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);

    // A directory of another account (whose content that account controls).
    if !is_root("a_demo_path_planted_by_someone_else_is_refused (another owner)") {
        return;
    }
    fs::remove_file(&demo).unwrap();
    fs::create_dir(&demo).unwrap();
    let (uid, gid) = nobody_ids();
    rustix::fs::chown(
        &demo,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .unwrap();
    let daemon = spawn_demo(tmp.path());
    assert_eq!(daemon.listening(), None);
    let (status, log) = daemon.wait();
    assert!(!status.success());
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains(&format!("belongs to uid {uid}")), "{log}");
    assert_eq!(fs::read_dir(&demo).unwrap().count(), 0);
}
