//! The servers of the side-by-side runs and what is measured on them besides transfers/s.
//!
//! A [`Kit`] is the comparison kit's folder plus the release binaries (`pasvd`, `pasv`, and
//! `floor`, the reference responder of `benches/`), built once for every mode. A [`Fleet`] is
//! one set of servers on one passive range size: the four peers (started with the kit's
//! `peers.sh`), the pasvd variants and the floor, every one on CPU 1 unless the run is the
//! contended one. On a fleet this module runs `pasv load` ([`run_load`]), counts system calls
//! (`strace -c -f`) and context switches (`perf stat -e context-switches`, each one a sleep
//! and so a wake-up) per transfer ([`count_syscalls`]), and reads the servers' memory with idle
//! sessions and with active transfers ([`measure_memory`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The comparison kit and the release binaries of every side-by-side mode.
pub struct Kit {
    /// The kit's folder (`peers.sh`, `compare.sh`).
    pub dir: PathBuf,
    /// `PEERS_HOME`: where the kit installed the peers.
    pub peers_home: String,
    /// The served folder, `PEERS_HOME/data`.
    pub data: PathBuf,
    /// The release `pasvd`.
    pub pasvd: PathBuf,
    /// The release `pasv` (its `load` is the generator).
    pub pasv: PathBuf,
    /// The release `floor` of `benches/`.
    pub floor: PathBuf,
}

impl Kit {
    /// Checks that `dir` holds the kit's `script` and builds the release binaries.
    pub fn prepare(root: &Path, dir: &Path, script: &str) -> Result<Kit> {
        if !dir.join(script).is_file() {
            bail!(
                "{} not found: --peers takes the comparison kit's folder",
                dir.join(script).display()
            );
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release", "-p", "pasv-tools", "--bins"])
            .args(["-p", "pasv-benches", "--bin", "floor"])
            .status()?;
        if !status.success() {
            bail!("building pasvd, pasv and floor failed");
        }
        let peers_home = std::env::var("PEERS_HOME").unwrap_or_else(|_| "/tmp/pasv-peers".into());
        let data = PathBuf::from(&peers_home).join("data");
        std::fs::create_dir_all(&data)?;
        let release = root.join("target/release");
        Ok(Kit {
            dir: dir.to_path_buf(),
            peers_home,
            data,
            pasvd: release.join("pasvd"),
            pasv: release.join("pasv"),
            floor: release.join("floor"),
        })
    }

    /// Writes `name` (`f1k.bin`, `f1m.bin`, `f16m.bin`) into the served folder; returns its path.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        let bytes = match name {
            "f1m.bin" => 1 << 20,
            "f16m.bin" => 16 << 20,
            _ => 1 << 10,
        };
        let path = self.data.join(name);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes as u64) {
            std::fs::write(&path, vec![b'x'; bytes])?;
        }
        Ok(path)
    }
}

/// One server of a comparison.
pub struct LoadTarget {
    /// The name in reports: the peer's, `pasvd-MODE`, `pasvd-baseline` or `floor`.
    pub label: String,
    /// `peer`, `custom` (a pasvd of this build), `baseline` (`--baseline`'s pasvd) or
    /// `floor`.
    pub kind: &'static str,
    /// Control port on 127.0.0.1.
    pub port: u16,
    /// Login.
    pub user: String,
    /// Password.
    pub pass: String,
    /// Passive range.
    pub range: (u16, u16),
    /// The server's (daemon's) process id: its sessions are it, its threads or its children.
    pub pid: u32,
}

/// A server process started here (pasvd or floor), killed when dropped.
pub struct Spawned {
    child: Child,
    /// The control port it printed.
    pub port: u16,
}

impl Spawned {
    /// Starts `command` and waits for its `listening on ADDR:PORT` line.
    pub fn start(command: Command, what: &str) -> Result<Spawned> {
        Spawned::start_inner(command, what, Stdio::null(), None)
    }

    /// As [`Spawned::start`], with the server's stderr in `log`: when it exits before
    /// listening, the error carries the last lines it wrote (why it refused to start).
    pub fn start_logged(command: Command, what: &str, log: &Path) -> Result<Spawned> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Spawned::start_inner(command, what, Stdio::from(file), Some(log))
    }

    fn start_inner(
        mut command: Command,
        what: &str,
        stderr: Stdio,
        log: Option<&Path>,
    ) -> Result<Spawned> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                let status = child.wait();
                let said = log
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .map(|text| failure_text(&text))
                    .unwrap_or_default();
                let status = status.map_or("?".into(), |s| s.to_string());
                if said.is_empty() {
                    bail!("{what} exited before listening ({status})");
                }
                bail!("{what} exited before listening ({status}): {said}");
            };
            if let Some(addr) = line?.strip_prefix("listening on ") {
                break addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    .with_context(|| format!("{what} printed an address without a port"))?;
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Spawned { child, port })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a program that failed wrote to stderr, without the backtrace `anyhow` appends when
/// `RUST_BACKTRACE` is set: its last 4 lines before `Stack backtrace:`.
pub fn failure_text(text: &str) -> String {
    let before = text.split("\nStack backtrace:").next().unwrap_or_default();
    last_lines(before, 4)
}

/// The last `n` non-empty lines of `text`, joined with ` / `.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// `taskset -c CPU program` when `cpu` is given, else `program`.
pub fn on_cpu(cpu: Option<u32>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The command of a pasvd serving `root` on `range` in listener `mode`.
pub fn pasvd_command(
    pasvd: &Path,
    root: &Path,
    range: (u16, u16),
    mode: &str,
    extra: &[&str],
    cpu: Option<u32>,
) -> Command {
    let mut c = on_cpu(cpu, pasvd);
    c.args(["--listener-mode", mode, "--listen", "127.0.0.1:0", "--root"])
        .arg(root)
        .args([
            "--pasv-min-port",
            &range.0.to_string(),
            "--pasv-max-port",
            &range.1.to_string(),
            // The generator's sessions stand for many clients but share one address: the
            // per-address lease cap (half the range by default) would halve the ports they
            // can use, and the per-address cap on sessions not logged in yet (8) refuses
            // logins with 421 when K sessions connect at once (over FTPS, where a login
            // takes a TLS handshake, and in plaintext too).
            "--max-passive-per-ip",
            "0",
        ]);
    // A baseline build may predate the flag (and the cap): it then has nothing to lift.
    if knows_flag(pasvd, "--max-unauthenticated-per-ip") {
        c.args(["--max-unauthenticated-per-ip", "0"]);
    }
    c.args(extra);
    c
}

/// Whether the program at `bin` lists `flag` in its `--help`.
fn knows_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// What a fleet is made of.
pub struct FleetSpec {
    /// Passive ports per server.
    pub ports: u16,
    /// Ranges of the pasvd variants and the floor (the peers get 20000 + i × ports).
    pub prebound: (u16, u16),
    /// A per-lease pasvd on this range, if any.
    pub per_lease: Option<(u16, u16)>,
    /// A prebound pasvd with busy polling (range, µs), if any.
    pub busy: Option<((u16, u16), u32)>,
    /// Another pasvd binary (an earlier build) in the default mode on this range, labelled
    /// `pasvd-baseline`, if any.
    pub baseline: Option<(PathBuf, (u16, u16))>,
    /// The floor's range.
    pub floor: (u16, u16),
    /// A second floor on this range, `floor-confined`, that opens each file beneath the
    /// folder of `floor_file` and resets queued connections at each grant (`floor --root`),
    /// if any.
    pub floor_confined: Option<(u16, u16)>,
    /// The file the floor serves for every RETR (under the kit's data folder).
    pub floor_file: PathBuf,
    /// Servers on CPU 1 (else anywhere).
    pub pin: bool,
    /// Where `peers.sh` keeps this fleet's configuration, logs and PID files.
    pub run_dir: PathBuf,
}

/// Started servers; the peers are stopped and the others killed when dropped.
pub struct Fleet {
    /// Every server, peers first, then pasvd, then the floor.
    pub targets: Vec<LoadTarget>,
    children: Vec<Spawned>,
    peers_sh: PathBuf,
    run_dir: PathBuf,
    peers_home: String,
}

/// The peers of the side-by-side runs, in the kit's order.
pub const PEERS: &[&str] = &["vsftpd", "pure-ftpd", "proftpd", "pyftpdlib"];

impl Fleet {
    /// Starts every server of `spec`.
    pub fn start(kit: &Kit, spec: &FleetSpec) -> Result<Fleet> {
        let mut fleet = Fleet {
            targets: Vec::new(),
            children: Vec::new(),
            peers_sh: kit.dir.join("peers.sh"),
            run_dir: spec.run_dir.clone(),
            peers_home: kit.peers_home.clone(),
        };
        std::fs::create_dir_all(&spec.run_dir)?;
        let cpu = spec.pin.then_some(1);
        for (i, name) in PEERS.iter().enumerate() {
            let lo = 20000 + i as u16 * spec.ports.max(20);
            let hi = lo + spec.ports - 1;
            let port = 2121 + i as u16;
            let said = fleet.peers_cmd(
                &[
                    "start",
                    name,
                    "--port",
                    &port.to_string(),
                    "--pasv",
                    &format!("{lo}-{hi}"),
                    "--root",
                    &kit.data.to_string_lossy(),
                ],
                cpu,
            )?;
            // NAME listening on 127.0.0.1:CTL user=U pass=P
            let field = |key: &str| {
                said.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_owned)
                    .unwrap_or_default()
            };
            let pid_file = spec.run_dir.join(format!("{name}.pid"));
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("{}: no PID", pid_file.display()))?;
            fleet.targets.push(LoadTarget {
                label: (*name).to_owned(),
                kind: "peer",
                port,
                user: field("user="),
                pass: field("pass="),
                range: (lo, hi),
                pid,
            });
        }
        let busy_us = spec.busy.map(|(_, us)| us.to_string());
        let mut variants = vec![("prebound", "prebound", spec.prebound, None)];
        if let Some(range) = spec.per_lease {
            variants.push(("per-lease", "per-lease", range, None));
        }
        if let (Some((range, _)), Some(us)) = (spec.busy, &busy_us) {
            variants.push(("prebound-busy", "prebound", range, Some(us.as_str())));
        }
        for (label, mode, range, busy) in variants {
            let mut extra = Vec::new();
            if let Some(us) = busy {
                extra.extend(["--busy-poll-us", us]);
            }
            let command = pasvd_command(&kit.pasvd, &kit.data, range, mode, &extra, cpu);
            let server = Spawned::start(command, "pasvd")?;
            fleet.targets.push(LoadTarget {
                label: format!("pasvd-{label}"),
                kind: "custom",
                port: server.port,
                user: "anonymous".into(),
                pass: "pasv@example.invalid".into(),
                range,
                pid: server.pid(),
            });
            fleet.children.push(server);
        }
        if let Some((bin, range)) = &spec.baseline {
            let command = pasvd_command(bin, &kit.data, *range, "prebound", &[], cpu);
            // Its stderr (a log line per transfer) goes where this build's pasvd's goes, so
            // that the two pay the same for it.
            let server = Spawned::start(command, "baseline pasvd")?;
            // Beside this build's default pasvd, so that the two run one after the other
            // in every round (the rounds alternate direction: see `round_order`).
            let at = fleet
                .targets
                .iter()
                .position(|t| t.label == "pasvd-prebound")
                .map_or(fleet.targets.len(), |i| i + 1);
            fleet.targets.insert(
                at,
                LoadTarget {
                    label: "pasvd-baseline".into(),
                    kind: "baseline",
                    port: server.port,
                    user: "anonymous".into(),
                    pass: "pasv@example.invalid".into(),
                    range: *range,
                    pid: server.pid(),
                },
            );
            fleet.children.push(server);
        }
        let confined = spec.floor_confined.map(|range| {
            let root = spec.floor_file.parent().unwrap_or(Path::new("/"));
            ("floor-confined", range, "--root", root)
        });
        let plain = ("floor", spec.floor, "--file", spec.floor_file.as_path());
        for (label, range, flag, path) in std::iter::once(plain).chain(confined) {
            let mut floor = on_cpu(cpu, &kit.floor);
            floor
                .args(["--pasv", &format!("{}-{}", range.0, range.1)])
                .arg(flag)
                .arg(path);
            let server = Spawned::start(floor, label)?;
            fleet.targets.push(LoadTarget {
                label: label.into(),
                kind: "floor",
                port: server.port,
                user: "anonymous".into(),
                pass: "x".into(),
                range,
                pid: server.pid(),
            });
            fleet.children.push(server);
        }
        Ok(fleet)
    }

    fn peers_cmd(&self, args: &[&str], cpu: Option<u32>) -> Result<String> {
        // Started on the server CPU: the daemons and their session processes inherit it.
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "bash"]);
                c
            }
            None => Command::new("bash"),
        };
        let output = command
            .arg(&self.peers_sh)
            .args(args)
            .env("PEERS_RUN", &self.run_dir)
            .env("PEERS_HOME", &self.peers_home)
            .stderr(Stdio::inherit())
            .output()?;
        if !output.status.success() {
            bail!("peers.sh {} failed", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.peers_cmd(&["stop", "all"], None);
    }
}

/// Busy and total jiffies of one CPU, from `/proc/stat`.
pub fn cpu_jiffies(cpu: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("{name} not in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Ok((busy, busy + get(3) + get(4)))
}

/// Jiffies per second as `/proc/stat` counts them (USER_HZ, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// Below this share of the server core busy, a run measured the generator or the latency
/// of the loop, not the server.
pub const SERVER_BOUND: f64 = 0.90;

/// At or above this share of one core busy, a single-threaded `pasv load` could offer no more
/// (see [`generator_saturated`]).
pub const GENERATOR_SATURATED: f64 = 0.90;

/// Whether the generator, not the server, set the rate of the closed-loop run `d`: pinned
/// and single-threaded (on its one CPU), it kept its core at least [`GENERATOR_SATURATED`]
/// busy while the server's core stayed below [`SERVER_BOUND`], and nothing failed (a server
/// that fails fast, or drops sessions, keeps a generator busy too). Contended runs never
/// qualify: there the two share the cores and neither bound can be read.
pub fn generator_saturated(run: &LoadRun<'_>, d: &Value) -> bool {
    let single_threaded = run.threads <= 1;
    let count = |key: &str| d[key].as_u64().unwrap_or(0);
    run.pin
        && single_threaded
        && run.rate.is_none()
        && d["loadgen_cpu_cores"]
            .as_f64()
            .is_some_and(|c| c >= GENERATOR_SATURATED)
        && d["server_core_busy"]
            .as_f64()
            .is_some_and(|b| b < SERVER_BOUND)
        && d["errors"].as_object().is_none_or(|e| e.is_empty())
        && count("count_425") == 0
        && count("sessions_lost") == 0
        && count("ports_outside_range") == 0
}

/// One `pasv load` run.
pub struct LoadRun<'a> {
    /// The file RETR fetches.
    pub file: &'a str,
    /// Sessions.
    pub k: u32,
    /// Seconds.
    pub duration_s: f64,
    /// Stop after this many transfers.
    pub max_transfers: Option<u64>,
    /// Generator on CPU 0 and the server core's busy time read from CPU 1.
    pub pin: bool,
    /// Explicit FTPS (`ftpes://`), the servers' certificate trusted from this PEM file.
    pub tls_ca: Option<&'a Path>,
    /// Open loop: transfers offered per second (`pasv load --rate`); `None`: closed loop.
    pub rate: Option<f64>,
    /// `pasv load --threads`: its threads (event loops); 0, one per CPU it may run on (pinned to
    /// CPU 0, that is one).
    pub threads: u32,
}

/// The `pasv load` command line of `run` against `t` (without `--json`).
pub fn load_command(kit: &Kit, t: &LoadTarget, run: &LoadRun<'_>) -> Command {
    let url = format!(
        "{}://{}:{}@127.0.0.1:{}/{}",
        if run.tls_ca.is_some() { "ftpes" } else { "ftp" },
        t.user,
        t.pass.replace('@', "%40"),
        t.port,
        run.file
    );
    let mut c = on_cpu(run.pin.then_some(0), &kit.pasv);
    c.args(["load", &url, "-k", &run.k.to_string()])
        .args(["--duration", &run.duration_s.to_string()])
        .args(["--expect-range", &format!("{}-{}", t.range.0, t.range.1)]);
    if let Some(n) = run.max_transfers {
        c.args(["--max-transfers", &n.to_string()]);
    }
    if let Some(ca) = run.tls_ca {
        c.arg("--ca-file").arg(ca);
    }
    if let Some(rate) = run.rate {
        c.args(["--rate", &rate.to_string()]);
    }
    if run.threads != 0 {
        c.args(["--threads", &run.threads.to_string()]);
    }
    c
}

/// The last JSON line of `pasv load --json`'s output.
pub fn load_json(stdout: &[u8], label: &str) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("pasv load against {label} printed no report"))?;
    Ok(serde_json::from_str(line)?)
}

/// CPU time, in clock ticks, of `pid`'s process tree: user and system time of every live
/// process (zombies included) and of every child they reaped (`cutime`, `cstime`: a session
/// process that ended counts in its parent's). Work the kernel does for the server in
/// interrupt context on another task's time is not in it.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    let mut ticks: BTreeMap<u32, u64> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // After `pid (comm)`: state ppid ... utime(14) stime(15) cutime(16) cstime(17).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        parent.insert(p, num(1) as u32);
        ticks.insert(p, num(11) + num(12) + num(13) + num(14));
    }
    let in_tree = |mut p: u32| loop {
        if p == pid {
            return true;
        }
        match parent.get(&p) {
            Some(&pp) if pp != 0 && pp != p => p = pp,
            _ => return false,
        }
    };
    ticks
        .iter()
        .filter(|(p, _)| in_tree(**p))
        .map(|(_, t)| t)
        .sum()
}

/// Runs `pasv load` against `t`; its JSON report with the server processes' CPU µs per
/// transfer and, when pinned, the server core's busy share, busy µs per transfer and (in a
/// closed loop, where a server that is not kept busy was not the limit) whether the run was
/// generator-bound.
pub fn run_load(kit: &Kit, t: &LoadTarget, run: &LoadRun<'_>) -> Result<Value> {
    let before = cpu_jiffies(1)?;
    let cpu_before = tree_cpu_ticks(t.pid);
    let output = load_command(kit, t, run)
        .arg("--json")
        .stderr(Stdio::null())
        .output()?;
    let after = cpu_jiffies(1)?;
    let cpu_after = tree_cpu_ticks(t.pid);
    let mut d = load_json(&output.stdout, &t.label)?;
    let transfers = d["transfers"].as_f64().unwrap_or(0.0);
    d["server_process_us_per_transfer"] = (transfers > 0.0)
        .then(|| cpu_after.saturating_sub(cpu_before) as f64 / USER_HZ * 1e6 / transfers)
        .into();
    if run.pin {
        let busy_j = (after.0 - before.0) as f64;
        let share = busy_j / (after.1 - before.1).max(1) as f64;
        let us = (transfers > 0.0).then(|| busy_j / USER_HZ * 1e6 / transfers);
        d["server_core_busy"] = share.into();
        d["server_us_per_transfer"] = us.into();
        if run.rate.is_none() {
            d["generator_bound"] = (share < SERVER_BOUND).into();
        }
    }
    d["generator_saturated"] = generator_saturated(run, &d).into();
    Ok(d)
}

/// System calls and wake-ups per transfer of one server.
#[derive(Debug, Default, Clone)]
pub struct SyscallCount {
    /// Transfers of the strace run.
    pub transfers: u64,
    /// Calls of the strace run.
    pub syscalls: u64,
    /// Calls by name, most frequent first.
    pub by_name: Vec<(String, u64)>,
    /// Context switches of the perf run.
    pub context_switches: u64,
    /// Transfers of the perf run.
    pub perf_transfers: u64,
    /// CPU time of the server's tasks (perf's task-clock), milliseconds.
    pub task_clock_ms: f64,
}

/// Parses the summary of `strace -c`: the total calls and the calls per syscall.
pub fn parse_strace_summary(text: &str) -> Option<(u64, Vec<(String, u64)>)> {
    let mut by_name = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = fields[3].parse::<u64>() else {
            continue;
        };
        let name = fields[fields.len() - 1];
        if name == "total" {
            total = Some(calls);
        } else {
            by_name.push((name.to_owned(), calls));
        }
    }
    by_name.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Some((total?, by_name))
}

/// Parses `perf stat -x,` output: counter value by event name.
pub fn parse_perf_csv(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() >= 3 {
            if let Ok(v) = fields[0].parse::<f64>() {
                out.insert(fields[2].to_owned(), v);
            }
        }
    }
    out
}

/// Counts `t`'s system calls (`strace -c -f` attached to its daemon, so forked sessions and
/// threads count) and context switches (`perf stat`, inherited by the same) over `transfers`
/// transfers of `run`, in two separate runs (strace slows the server down by itself).
pub fn count_syscalls(
    kit: &Kit,
    t: &LoadTarget,
    run: &LoadRun<'_>,
    out: &Path,
) -> Result<SyscallCount> {
    let mut count = SyscallCount::default();
    let perf_out = out.join(format!("perf-{}.csv", t.label));
    let output = Command::new("perf")
        .args(["stat", "-x,", "-e", "context-switches,task-clock", "-p"])
        .arg(t.pid.to_string())
        .arg("-o")
        .arg(&perf_out)
        .arg("--")
        .args(
            std::iter::once(load_command(kit, t, run).get_program().to_owned())
                .chain(load_command(kit, t, run).get_args().map(|a| a.to_owned())),
        )
        .arg("--json")
        .stderr(Stdio::null())
        .output()
        .context("running perf stat (is perf installed?)")?;
    let d = load_json(&output.stdout, &t.label)?;
    count.perf_transfers = d["transfers"].as_u64().unwrap_or(0);
    let counters = parse_perf_csv(&std::fs::read_to_string(&perf_out)?);
    count.context_switches = counters.get("context-switches").copied().unwrap_or(0.0) as u64;
    count.task_clock_ms = counters.get("task-clock").copied().unwrap_or(0.0);

    let strace_out = out.join(format!("strace-{}.txt", t.label));
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-p"])
        .arg(t.pid.to_string())
        .arg("-o")
        .arg(&strace_out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running strace (is strace installed?)")?;
    // strace says `Process N attached` once it traces the process.
    let mut stderr = BufReader::new(strace.stderr.take().context("strace stderr")?);
    let mut first = String::new();
    stderr.read_line(&mut first)?;
    if !first.contains("attached") {
        let _ = strace.kill();
        let _ = strace.wait();
        bail!("strace could not attach to {}: {first}", t.label);
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let result = load_command(kit, t, run)
        .arg("--json")
        .stderr(Stdio::null())
        .output();
    // SIGINT: strace detaches and writes its summary.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let d = load_json(&result?.stdout, &t.label)?;
    count.transfers = d["transfers"].as_u64().unwrap_or(0);
    let text = std::fs::read_to_string(&strace_out)?;
    let (total, by_name) = parse_strace_summary(&text)
        .with_context(|| format!("no strace summary in {}", strace_out.display()))?;
    count.syscalls = total;
    count.by_name = by_name;
    Ok(count)
}

/// The syscall and wake-up table.
pub fn syscall_report(rows: &[(String, SyscallCount)], transfers: u64, k: u32) -> String {
    let mut out = format!(
        "### System calls and wake-ups per transfer (1000 ports, K={k}, 1 KiB RETR, {transfers} transfers)\n\n\
         | server | syscalls/transfer | context switches (wake-ups)/transfer | CPU µs/transfer (perf) | most frequent calls per transfer |\n\
         |---|---|---|---|---|\n"
    );
    for (label, c) in rows {
        let per = |n: u64, t: u64| {
            if t == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}", n as f64 / t as f64)
            }
        };
        let top: Vec<String> = c
            .by_name
            .iter()
            .take(6)
            .map(|(name, n)| format!("{name} {:.1}", *n as f64 / c.transfers.max(1) as f64))
            .collect();
        let cpu = if c.perf_transfers == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", c.task_clock_ms * 1e3 / c.perf_transfers as f64)
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {cpu} | {} |",
            per(c.syscalls, c.transfers),
            per(c.context_switches, c.perf_transfers),
            top.join(", ")
        );
    }
    out
}

/// Memory of a process tree, kB.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeMemory {
    /// Processes in the tree.
    pub processes: u64,
    /// Sum of VmRSS.
    pub rss_kb: u64,
    /// Sum of Pss.
    pub pss_kb: u64,
}

/// Sums VmRSS and Pss over `pid` and all its descendants.
pub fn tree_memory(pid: u32) -> Result<TreeMemory> {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        {
            parent.insert(p, ppid);
        }
    }
    let in_tree = |mut p: u32| loop {
        if p == pid {
            return true;
        }
        match parent.get(&p) {
            Some(&pp) if pp != 0 && pp != p => p = pp,
            _ => return false,
        }
    };
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut m = TreeMemory::default();
    for &p in parent.keys().filter(|&&p| in_tree(p)) {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        m.processes += 1;
        m.rss_kb += field(&status, "VmRSS:");
        m.pss_kb += field(&rollup, "Pss:");
    }
    Ok(m)
}

/// One FTP control connection of the memory probe.
struct Probe {
    ctl: BufReader<TcpStream>,
    data: Option<TcpStream>,
}

impl Probe {
    /// Connects from `from`, logs in as `user`, switches to binary.
    fn login(from: IpAddr, to: SocketAddr, user: &str, pass: &str) -> Result<Probe> {
        let stream = connect_from(from, to)?;
        let mut p = Probe {
            ctl: BufReader::new(stream),
            data: None,
        };
        p.expect(None, 220)?;
        let code = p.reply_to(&format!("USER {user}"))?;
        if code == 331 {
            p.expect(Some(&format!("PASS {pass}")), 230)?;
        } else if code != 230 {
            bail!("USER: {code}");
        }
        p.expect(Some("TYPE I"), 200)?;
        Ok(p)
    }

    fn reply_to(&mut self, command: &str) -> Result<u16> {
        self.ctl
            .get_mut()
            .write_all(format!("{command}\r\n").as_bytes())?;
        Ok(self.reply()?.0)
    }

    fn expect(&mut self, command: Option<&str>, want: u16) -> Result<String> {
        if let Some(c) = command {
            self.ctl
                .get_mut()
                .write_all(format!("{c}\r\n").as_bytes())?;
        }
        let (code, text) = self.reply()?;
        if code != want {
            bail!("{}: {text}", command.unwrap_or("greeting"));
        }
        Ok(text)
    }

    /// One reply, multi-line ones whole: its code and last line.
    fn reply(&mut self) -> Result<(u16, String)> {
        loop {
            let mut line = String::new();
            if self.ctl.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                return Ok((line[..3].parse()?, line.trim_end().to_owned()));
            }
        }
    }

    /// PASV, the data connection, RETR, and the first byte: the transfer is then under way and
    /// stays so (nothing more is read).
    fn start_download(&mut self, from: IpAddr, file: &str) -> Result<()> {
        let text = self.expect(Some("PASV"), 227)?;
        let inner = text
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(i, _)| i)
            .context("227 without an address")?;
        let n: Vec<u16> = inner
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        if n.len() != 6 {
            bail!("227 address: {inner}");
        }
        let port = n[4] * 256 + n[5];
        let mut data = connect_from(from, SocketAddr::from(([127, 0, 0, 1], port)))?;
        self.ctl
            .get_mut()
            .write_all(format!("RETR {file}\r\n").as_bytes())?;
        let mut first = [0u8; 1];
        data.read_exact(&mut first)?;
        self.data = Some(data);
        Ok(())
    }
}

fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Small receive buffers: an active transfer holds little in the client's kernel.
    Ok(stream)
}

/// The address of probe session `i`: 127.3.0.1 and up, one per session (the per-address
/// limits of the servers stay out of the way).
fn probe_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 3, (i / 250) as u8, (i % 250) as u8 + 1))
}

/// Memory of one server: idle and active deltas.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRow {
    /// Before the sessions.
    pub base: TreeMemory,
    /// With the idle sessions.
    pub idle: TreeMemory,
    /// With the transfers under way.
    pub active: TreeMemory,
    /// Idle sessions opened.
    pub sessions: usize,
    /// Transfers started.
    pub transfers: usize,
}

/// Opens `sessions` idle logged-in sessions to `t` and then starts `transfers` downloads of
/// `file` on the first of them that stay under way; the server tree's memory before, with
/// the idle sessions, and with the transfers.
pub fn measure_memory(
    t: &LoadTarget,
    sessions: usize,
    transfers: usize,
    file: &str,
) -> Result<MemoryRow> {
    let to = SocketAddr::from(([127, 0, 0, 1], t.port));
    let base = tree_memory(t.pid)?;
    let mut probes = Vec::with_capacity(sessions);
    for i in 0..sessions {
        probes.push(
            Probe::login(probe_address(i), to, &t.user, &t.pass)
                .with_context(|| format!("{} session {i}", t.label))?,
        );
    }
    let idle = tree_memory(t.pid)?;
    for (i, p) in probes.iter_mut().take(transfers).enumerate() {
        p.start_download(probe_address(i), file)
            .with_context(|| format!("{} transfer {i}", t.label))?;
    }
    let active = tree_memory(t.pid)?;
    drop(probes);
    Ok(MemoryRow {
        base,
        idle,
        active,
        sessions,
        transfers,
    })
}

/// The memory table.
pub fn memory_report(rows: &[(String, MemoryRow)], file: &str) -> String {
    let mut out = format!(
        "### Memory per idle session and per active transfer ({file})\n\n\
         Sums over the server's processes (the daemon and its children): VmRSS counts pages \
         shared between processes once per process, PSS divides them among the sharers.\n\n\
         | server | processes (base / idle / active) | base RSS MiB | RSS KiB per idle session | PSS KiB per idle session | RSS KiB per active transfer | PSS KiB per active transfer |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for (label, r) in rows {
        let per = |a: u64, b: u64, n: usize| (a as f64 - b as f64) / n.max(1) as f64;
        let _ = writeln!(
            out,
            "| {label} | {} / {} / {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.base.processes,
            r.idle.processes,
            r.active.processes,
            r.base.rss_kb as f64 / 1024.0,
            per(r.idle.rss_kb, r.base.rss_kb, r.sessions),
            per(r.idle.pss_kb, r.base.pss_kb, r.sessions),
            per(r.active.rss_kb, r.idle.rss_kb, r.transfers),
            per(r.active.pss_kb, r.idle.pss_kb, r.transfers),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_pinned_single_threaded_closed_loop_run_is_generator_saturated() {
        let run = LoadRun {
            file: "f1k.bin",
            k: 8,
            duration_s: 5.0,
            max_transfers: None,
            pin: true,
            tls_ca: None,
            rate: None,
            threads: 1,
        };
        let clean = serde_json::json!({
            "loadgen_cpu_cores": 0.97, "server_core_busy": 0.88, "errors": {},
            "count_425": 0, "sessions_lost": 0, "ports_outside_range": 0,
        });
        assert!(generator_saturated(&run, &clean));
        let with = |key: &str, v: Value| {
            let mut d = clean.clone();
            d[key] = v;
            generator_saturated(&run, &d)
        };
        assert!(!with("loadgen_cpu_cores", 0.85.into()));
        // The server's core was the limit.
        assert!(!with("server_core_busy", 0.95.into()));
        // A server that fails fast keeps the generator busy too.
        assert!(!with("errors", serde_json::json!({"550": 3})));
        assert!(!with("count_425", 1.into()));
        assert!(!with("sessions_lost", 1.into()));
        assert!(!with("ports_outside_range", 1.into()));
        // Pinned to one CPU, the generator's default is one thread.
        assert!(generator_saturated(&LoadRun { threads: 0, ..run }, &clean));
        assert!(!generator_saturated(&LoadRun { threads: 2, ..run }, &clean));
        assert!(!generator_saturated(&LoadRun { pin: false, ..run }, &clean));
        let open_loop = LoadRun {
            rate: Some(5000.0),
            ..run
        };
        assert!(!generator_saturated(&open_loop, &clean));
    }

    #[test]
    fn tls_runs_go_over_ftpes_and_trust_the_run_certificate() {
        let kit = Kit {
            dir: PathBuf::from("/kit"),
            peers_home: "/peers".into(),
            data: PathBuf::from("/peers/data"),
            pasvd: PathBuf::from("/bin/pasvd"),
            pasv: PathBuf::from("/bin/pasv"),
            floor: PathBuf::from("/bin/floor"),
        };
        let t = LoadTarget {
            label: "vsftpd".into(),
            kind: "peer",
            port: 2141,
            user: "anonymous".into(),
            pass: "peer@example.invalid".into(),
            range: (20000, 20019),
            pid: 1,
        };
        let ca = PathBuf::from("/run/tls/cert.pem");
        let mut run = LoadRun {
            file: "f1k.bin",
            k: 32,
            duration_s: 5.0,
            max_transfers: None,
            pin: false,
            tls_ca: Some(&ca),
            rate: None,
            threads: 0,
        };
        let args = |run: &LoadRun<'_>| -> Vec<String> {
            load_command(&kit, &t, run)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let tls = args(&run);
        assert_eq!(
            tls[1], "ftpes://anonymous:peer%40example.invalid@127.0.0.1:2141/f1k.bin",
            "{tls:?}"
        );
        let at = tls
            .iter()
            .position(|a| a == "--ca-file")
            .expect("--ca-file");
        assert_eq!(tls[at + 1], "/run/tls/cert.pem");
        run.tls_ca = None;
        let plain = args(&run);
        assert!(plain[1].starts_with("ftp://"), "{plain:?}");
        assert!(!plain.iter().any(|a| a == "--ca-file"), "{plain:?}");
    }

    #[test]
    fn last_lines_keeps_the_end_of_a_log() {
        assert_eq!(last_lines("a\n\nb\n  c  \nd\n", 2), "c / d");
        assert_eq!(last_lines("only\n", 4), "only");
        assert_eq!(last_lines("", 3), "");
        let refused = "Error: configuration: tls_cert is set, but ...\n\nStack backtrace:\n   0: anyhow::error\n             at src/lib.rs:1\n  19: _start\n";
        assert_eq!(
            failure_text(refused),
            "Error: configuration: tls_cert is set, but ..."
        );
        assert_eq!(failure_text("a\nb\n"), "a / b");
    }

    #[test]
    fn strace_summaries_and_perf_csv_are_read() {
        let strace = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           2      2000           write
 30.00    0.003000           1      3000       120 read
 30.00    0.003000           3      1000           accept4
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           1      6000       120 total
";
        let (total, by_name) = parse_strace_summary(strace).unwrap();
        assert_eq!(total, 6000);
        assert_eq!(
            by_name,
            vec![
                ("read".to_owned(), 3000),
                ("write".to_owned(), 2000),
                ("accept4".to_owned(), 1000)
            ]
        );
        assert!(parse_strace_summary("nothing here").is_none());
        let perf = "# started on Thu\n\n12345,,context-switches,1000000,100.00,,\n42.5,msec,task-clock,42500000,100.00,0.01,CPUs utilized\n";
        let counters = parse_perf_csv(perf);
        assert_eq!(counters["context-switches"], 12345.0);
        assert_eq!(counters["task-clock"], 42.5);
    }
}
