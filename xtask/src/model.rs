//! `cargo xtask model-check`: the capacity model against a real kernel, client and server
//! in two network namespaces joined by a veth pair (each side's TIME_WAIT in its own
//! stack, as across the internet). Needs root (`ip netns`); skips with a message otherwise.
//!
//! 1. Onset of refusals: pasvd with `--no-reuseaddr --quarantine port --listener-mode
//!    per-lease` on N ports, one paced client (python3 ftplib, RETR of a small file) per
//!    offered rate, arrivals evenly spaced. The model says the (N+1)-th arrival, at N/λ,
//!    finds a port iff N/λ ≥ h + T, i.e. λ ≤ rate_max = N/(h+T) (f = 1: the server
//!    closes). Every rate runs at once on its own range and server, so the run takes about
//!    two T whatever the number of rates.
//! 2. Which side holds TIME_WAIT after RETR and after STOR, from each namespace's
//!    `/proc/net/tcp`, against docs/DESIGN.md (server after RETR, client after STOR).
//! 3. The servers' ledgers against their kernel at the end of the paced runs, through
//!    `pasv doctor --metrics` run in the server's namespace: zero disagreements expected.
//!
//! Writes `target/model-check/result.json` and `target/model-check/onset.svg`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const NS_SERVER: &str = "pasvmc-srv";
const NS_CLIENT: &str = "pasvmc-cli";
const SERVER_IP: &str = "10.213.0.1";
const CLIENT_IP: &str = "10.213.0.2";
/// Linux TCP_TIMEWAIT_LEN.
const T: f64 = 60.0;

/// The paced client and the RETR/STOR client (python3 ftplib: a client users use).
const CLIENT_PY: &str = r#"
import ftplib, io, json, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 20
while True:
    try:
        ftp = ftplib.FTP()
        ftp.connect(host, port, timeout=20)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
ftp.login()
if mode == "paced":
    rate, count = float(sys.argv[4]), int(sys.argv[5])
    start = time.monotonic() + 0.5
    for k in range(count):
        at = start + k / rate
        time.sleep(max(0.0, at - time.monotonic()))
        t0 = time.monotonic()
        try:
            ftp.retrbinary("RETR f", lambda b: None)
            ok, msg = True, ""
        except ftplib.error_temp as e:
            ok, msg = False, str(e)
        print(json.dumps({"k": k, "late": t0 - at, "ok": ok, "hold": time.monotonic() - t0, "msg": msg}), flush=True)
elif mode == "holder":
    import random, socket
    seed, until = int(sys.argv[4]), time.monotonic() + float(sys.argv[5])
    rng = random.Random(seed)
    while time.monotonic() < until:
        try:
            host, dport = ftplib.parse227(ftp.sendcmd("PASV"))
        except ftplib.error_temp:
            time.sleep(0.05)
            continue
        time.sleep(rng.uniform(0.5, 2.5))
        conn = socket.create_connection((host, dport), timeout=20)
        ftp.sendcmd("RETR f")
        while conn.recv(65536):
            pass
        conn.close()
        ftp.voidresp()
        time.sleep(0.3)
elif mode == "probe":
    import re
    until = time.monotonic() + float(sys.argv[4])
    time.sleep(5)
    while time.monotonic() < until:
        try:
            ftp.sendcmd("PASV")
            ftp.sendcmd("ABOR")
            time.sleep(0.1)
            continue
        except ftplib.error_temp as e:
            m = re.search(r"retry after ([0-9.]+)s", str(e))
            if not m:
                time.sleep(0.1)
                continue
            hint = float(m.group(1))
        t0 = time.monotonic()
        while True:
            time.sleep(0.01)
            try:
                ftp.sendcmd("PASV")
                break
            except ftplib.error_temp:
                pass
        print(json.dumps({"hint": hint, "actual": time.monotonic() - t0}), flush=True)
        ftp.sendcmd("ABOR")
        time.sleep(0.5)
elif mode == "retr":
    ftp.retrbinary("RETR f", lambda b: None)
    print("done", flush=True)
elif mode == "stor":
    ftp.storbinary("STOR up", io.BytesIO(b"x" * 1000))
    print("done", flush=True)
ftp.quit()
"#;

struct Netns;

impl Netns {
    /// Whether the experiment's namespaces exist already: another run in progress, or one
    /// that was interrupted (a signal skips `Drop`).
    fn exist() -> bool {
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                    [NS_SERVER, NS_CLIENT].contains(&l.split_whitespace().next().unwrap_or(""))
                })
            })
            .unwrap_or(false)
    }

    fn create() -> Result<Netns> {
        run("ip", &["netns", "add", NS_SERVER])?;
        let ns = Netns;
        run("ip", &["netns", "add", NS_CLIENT])?;
        run(
            "ip",
            &[
                "link", "add", "pasvmc0", "netns", NS_SERVER, "type", "veth", "peer", "name",
                "pasvmc1", "netns", NS_CLIENT,
            ],
        )?;
        for (ns, dev, ip) in [
            (NS_SERVER, "pasvmc0", SERVER_IP),
            (NS_CLIENT, "pasvmc1", CLIENT_IP),
        ] {
            let cidr = format!("{ip}/30");
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    fn remove() {
        for ns in [NS_SERVER, NS_CLIENT] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::remove();
    }
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A child process killed when dropped (unless waited for with [`Proc::output`]).
struct Proc(Option<Child>);

impl Proc {
    fn new(child: Child) -> Proc {
        Proc(Some(child))
    }

    fn output(mut self) -> Result<std::process::Output> {
        let child = self.0.take().context("process already waited for")?;
        Ok(child.wait_with_output()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

struct Level {
    factor: f64,
    ports: (u16, u16),
    control: u16,
    metrics: u16,
}

/// Entry point.
pub fn run_model_check(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let root = crate::bench::workspace_root()?;
    let out_dir = root.join("target/model-check");
    std::fs::create_dir_all(&out_dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "-p", "pasv-tools", "--bins"])
        .status()?;
    if !status.success() {
        bail!("building pasvd and pasv failed");
    }
    let bin = root.join("target/debug");
    if Netns::exist() {
        if args.iter().any(|a| a == "--force") {
            println!("model-check: removing namespaces {NS_SERVER} and {NS_CLIENT} left by an earlier run");
            Netns::remove();
        } else {
            bail!(
                "network namespaces {NS_SERVER} or {NS_CLIENT} exist: another model-check is \
                 running, or an interrupted one left them (pass --force to remove them)"
            );
        }
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            println!("model-check skipped: network namespaces not permitted here ({e:#})");
            return Ok(());
        }
    };
    let work = std::env::temp_dir().join(format!("pasv-model-check-{}", std::process::id()));
    std::fs::create_dir_all(work.join("root"))?;
    std::fs::write(work.join("root/f"), vec![7u8; 4096])?;
    let script = work.join("client.py");
    std::fs::write(&script, CLIENT_PY)?;

    let sides = time_wait_sides(&bin, &work, &script)?;
    println!(
        "TIME_WAIT after RETR: server {} client {}; after STOR: server {} client {}",
        sides[0], sides[1], sides[2], sides[3]
    );

    let n: u16 = 10;
    let factors: &[f64] = if quick {
        &[0.95, 1.05]
    } else {
        &[0.90, 0.95, 0.98, 1.02, 1.05, 1.10]
    };
    let levels: Vec<Level> = factors
        .iter()
        .enumerate()
        .map(|(i, &factor)| {
            let lo = 40_000 + 20 * i as u16;
            Level {
                factor,
                ports: (lo, lo + n - 1),
                control: 2_200 + i as u16,
                metrics: 9_200 + i as u16,
            }
        })
        .collect();
    // h is a few milliseconds on a veth pair; rate_max uses the hold measured below, and
    // the schedule uses h = 0 (the difference is well under the spacing of the rates).
    let arrivals = if quick {
        n as usize + 2
    } else {
        2 * n as usize + 2
    };
    let mut servers = Vec::new();
    for l in &levels {
        servers.push(Proc::new(
            in_ns(NS_SERVER, &bin.join("pasvd"))
                .args(["--listen", &format!("{SERVER_IP}:{}", l.control), "--root"])
                .arg(work.join("root"))
                .args([
                    "--pasv-address",
                    SERVER_IP,
                    "--pasv-min-port",
                    &l.ports.0.to_string(),
                    "--pasv-max-port",
                    &l.ports.1.to_string(),
                    "--no-reuseaddr",
                    "--quarantine",
                    "port",
                    "--time-wait",
                    "60",
                    "--listener-mode",
                    "per-lease",
                    "--pasv-wait",
                    "0",
                    "--metrics",
                    &format!("{SERVER_IP}:{}", l.metrics),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting pasvd")?,
        ));
    }
    // The experiment's own wall time, for the report (not a server clock).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let mut clients = Vec::new();
    for l in &levels {
        let rate = l.factor * f64::from(n) / T;
        clients.push(Proc::new(
            in_ns(NS_CLIENT, Path::new("python3"))
                .arg(&script)
                .args([
                    "paced",
                    SERVER_IP,
                    &l.control.to_string(),
                    &rate.to_string(),
                    &arrivals.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting python3")?,
        ));
    }
    let mut results = Vec::new();
    for (l, c) in levels.iter().zip(clients) {
        let out = c.output()?;
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let ok = |r: &serde_json::Value| r["ok"].as_bool() == Some(true);
        let first_refused = rows.iter().position(|r| !ok(r));
        let refused = rows.iter().filter(|r| !ok(r)).count();
        let hold: Vec<f64> = rows
            .iter()
            .filter(|r| ok(r))
            .filter_map(|r| r["hold"].as_f64())
            .collect();
        let late = rows
            .iter()
            .filter_map(|r| r["late"].as_f64())
            .fold(0.0f64, f64::max);
        let doctor = Command::new("ip")
            .args(["netns", "exec", NS_SERVER])
            .arg(bin.join("pasv"))
            .args([
                "doctor",
                "--ports",
                &format!("{}-{}", l.ports.0, l.ports.1),
                "--address",
                SERVER_IP,
                "--metrics",
                &format!("{SERVER_IP}:{}", l.metrics),
                "--json",
            ])
            .output()?;
        let doctor: serde_json::Value =
            serde_json::from_slice(&doctor.stdout).unwrap_or(serde_json::Value::Null);
        let hold_mean = hold.iter().sum::<f64>() / hold.len().max(1) as f64;
        let r = serde_json::json!({
            "factor": l.factor,
            "offered_rate": l.factor * f64::from(n) / T,
            "arrivals": rows.len(),
            "refused": refused,
            "first_refused": first_refused,
            "hold_mean_s": hold_mean,
            "latest_start_s": late,
            "kernel_time_wait": doctor["host"]["passive_time_wait"],
            "disagreements": doctor["server_disagreements"],
        });
        println!("{r}");
        results.push(r);
    }
    drop(servers);
    let hint = hint_accuracy(&bin, &work, &script, if quick { 20.0 } else { 60.0 })?;
    println!("{hint}");
    let hold = results
        .iter()
        .filter_map(|r| r["hold_mean_s"].as_f64())
        .sum::<f64>()
        / results.len() as f64;
    let rate_max = f64::from(n) / (hold + T);
    let refused_at = |r: &serde_json::Value| {
        r["first_refused"]
            .as_u64()
            .is_some_and(|k| k <= u64::from(n))
    };
    let below = results
        .iter()
        .filter(|r| !refused_at(r))
        .filter_map(|r| r["offered_rate"].as_f64())
        .fold(f64::NAN, f64::max);
    let above = results
        .iter()
        .filter(|r| refused_at(r))
        .filter_map(|r| r["offered_rate"].as_f64())
        .fold(f64::NAN, f64::min);
    let onset = (below + above) / 2.0;
    let summary = serde_json::json!({
        "ports": n,
        "time_wait_s": T,
        "hold_mean_s": hold,
        "rate_max": rate_max,
        "highest_rate_without_refusal": below,
        "lowest_rate_with_refusal": above,
        "onset": onset,
        "onset_error": (onset - rate_max) / rate_max,
        "time_wait_after_retr": {"server": sides[0], "client": sides[1]},
        "time_wait_after_stor": {"server": sides[2], "client": sides[3]},
        "levels": results,
        "all_leased_hint": hint,
        "runtime_s": started.elapsed().as_secs_f64(),
    });
    std::fs::write(
        out_dir.join("result.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    plot(&out_dir.join("onset.svg"), &summary, n)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    drop(ns);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The 425 hint when every port is leased and none cooling (quarantine none), against the
/// wait that follows: 4 ports, 4 holders that lease, wait 0.5-2.5 s (uniform), RETR, rest
/// 0.3 s; a probe that, refused, polls PASV every 10 ms until it gets a port. Each refusal
/// gives (hint, actual wait); also scored: what the old fixed 1 s hint would have said.
fn hint_accuracy(bin: &Path, work: &Path, script: &Path, secs: f64) -> Result<serde_json::Value> {
    let _server = Proc::new(
        in_ns(NS_SERVER, &bin.join("pasvd"))
            .args(["--listen", &format!("{SERVER_IP}:2298"), "--root"])
            .arg(work.join("root"))
            .args([
                "--pasv-address",
                SERVER_IP,
                "--pasv-min-port",
                "42000",
                "--pasv-max-port",
                "42003",
                "--max-passive-per-ip",
                "0",
                "--quarantine",
                "none",
                "--pasv-wait",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut holders = Vec::new();
    for seed in 0..4 {
        holders.push(Proc::new(
            in_ns(NS_CLIENT, Path::new("python3"))
                .arg(script)
                .args([
                    "holder",
                    SERVER_IP,
                    "2298",
                    &seed.to_string(),
                    &(secs + 3.0).to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ));
    }
    let probe = Proc::new(
        in_ns(NS_CLIENT, Path::new("python3"))
            .arg(script)
            .args(["probe", SERVER_IP, "2298", &secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    )
    .output()?;
    drop(holders);
    let pairs: Vec<(f64, f64)> = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["hint"].as_f64()?, v["actual"].as_f64()?)))
        .collect();
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    let err = |guess: &dyn Fn(f64) -> f64| {
        median(pairs.iter().map(|&(h, a)| (guess(h) - a).abs()).collect())
    };
    let covered = |guess: &dyn Fn(f64) -> f64| {
        pairs.iter().filter(|&&(h, a)| guess(h) >= a).count() as f64 / pairs.len().max(1) as f64
    };
    Ok(serde_json::json!({
        "refusals": pairs.len(),
        "median_actual_wait_s": median(pairs.iter().map(|p| p.1).collect()),
        "median_hint_s": median(pairs.iter().map(|p| p.0).collect()),
        "median_abs_error_s": err(&|h| h),
        "share_port_free_by_hint": covered(&|h| h),
        "fixed_1s_median_abs_error_s": err(&|_| 1.0),
        "fixed_1s_share_port_free_by_hint": covered(&|_| 1.0),
        "pairs": pairs,
    }))
}

/// TIME_WAIT sockets on the passive range after one RETR and then one STOR: [server after
/// RETR, client after RETR, server after STOR, client after STOR] (cumulative).
fn time_wait_sides(bin: &Path, work: &Path, script: &Path) -> Result<[usize; 4]> {
    let ports = (41_000u16, 41_009u16);
    let _server = Proc::new(
        in_ns(NS_SERVER, &bin.join("pasvd"))
            .args(["--listen", &format!("{SERVER_IP}:2299"), "--root"])
            .arg(work.join("root"))
            .args([
                "--pasv-address",
                SERVER_IP,
                "--pasv-min-port",
                &ports.0.to_string(),
                "--pasv-max-port",
                &ports.1.to_string(),
                "--anonymous-write",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let count = |ns: &str, local: bool| -> Result<usize> {
        let mut n = 0;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "cat", table])
                .output()?;
            for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 4 || f[3] != "06" {
                    continue;
                }
                let field = if local { f[1] } else { f[2] };
                let port = field
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0);
                if (ports.0..=ports.1).contains(&port) {
                    n += 1;
                }
            }
        }
        Ok(n)
    };
    let mut out = [0; 4];
    for (i, mode) in ["retr", "stor"].into_iter().enumerate() {
        let status = in_ns(NS_CLIENT, Path::new("python3"))
            .arg(script)
            .args([mode, SERVER_IP, "2299"])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("the {mode} client failed");
        }
        // The FINs have crossed when the client returns from QUIT.
        out[2 * i] = count(NS_SERVER, true)?;
        out[2 * i + 1] = count(NS_CLIENT, false)?;
    }
    Ok(out)
}

fn plot(path: &PathBuf, summary: &serde_json::Value, n: u16) -> Result<()> {
    use plotters::prelude::*;
    let rate_max = summary["rate_max"].as_f64().unwrap_or(0.0);
    let levels = summary["levels"].as_array().cloned().unwrap_or_default();
    let points: Vec<(f64, f64)> = levels
        .iter()
        .filter_map(|l| {
            let arrivals = l["arrivals"].as_f64()?;
            Some((
                l["offered_rate"].as_f64()?,
                l["refused"].as_f64()? / arrivals.max(1.0),
            ))
        })
        .collect();
    let x_hi = points.iter().map(|p| p.0).fold(rate_max, f64::max) * 1.05;
    let x_lo = points.iter().map(|p| p.0).fold(rate_max, f64::min) * 0.95;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Refusals against offered rate: {n} ports, --no-reuseaddr --quarantine port"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x_lo..x_hi, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (RETR/s)")
        .y_desc("share of arrivals refused (425)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            vec![(rate_max, 0.0), (rate_max, 1.0)],
            RED.stroke_width(2),
        ))?
        .label(format!("rate_max = N/(h+T) = {rate_max:.4}/s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 5, BLUE.filled())))?
        .label("measured (veth between two network namespaces)")
        .legend(|(x, y)| Circle::new((x + 8, y), 4, BLUE.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
