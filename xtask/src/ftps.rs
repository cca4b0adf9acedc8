//! The FTPS workloads of `cargo xtask bench --peers KIT --tls`: explicit FTPS (AUTH TLS,
//! PBSZ 0, PROT P) against the peers and pasvd, configured for TLS here.
//!
//! The kit's `peers.sh` writes plaintext configurations only, so this module starts the peers
//! itself, with the binaries the kit installed or unpacked, from configuration files and
//! command lines it writes into the workload's run folder, next to a development certificate
//! made for the run (rcgen, ECDSA P-256, `localhost` and `127.0.0.1`):
//!
//! - vsftpd: `ssl_enable`, `allow_anon_ssl`, `force_anon_logins_ssl`, `force_anon_data_ssl`
//!   (and the `local` ones), `require_ssl_reuse=YES`;
//! - Pure-FTPd: `-Y 3` (no cleartext control or data connection) with the certificate and key
//!   in one file (`-2 FILE`);
//! - ProFTPD: mod_tls (`TLSRequired on`, session reuse required, its default), when the
//!   unpacked build has `mod_tls.so`; Debian ships it in `proftpd-mod-crypto`, not in
//!   `proftpd-core`;
//! - pyftpdlib: `TLS_FTPHandler` with TLS required on both channels, when Python can import
//!   it (it needs pyOpenSSL);
//! - pasvd: `--tls-cert`, `--tls-key`, `--tls-required all` (data connections must resume
//!   their own session's TLS session by default).
//!
//! A server that cannot run (no TLS support in the build, a refusal to start, a preflight of
//! three downloads that fails) is left out of the runs with its reason in the report: one
//! server that does not run never stops the others' measurement. `pasv load` drives them over
//! `ftpes://`, trusting the run's certificate (`--ca-file`), pinned as the plaintext runs are.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{measure_rounds, Workload};
use crate::fleet::{
    last_lines, load_command, load_json, on_cpu, pasvd_command, Kit, LoadRun, LoadTarget, Spawned,
    PEERS,
};

/// Anonymous login of vsftpd, ProFTPD and pyftpdlib (as the kit's).
const ANON: (&str, &str) = ("anonymous", "peer@example.invalid");
/// Pure-FTPd's virtual user (as the kit's; its anonymous root is fixed to `~ftp`).
const PURE: (&str, &str) = ("peer", "peer");
/// SHA-512 crypt of `peer` (the kit's): pure-pw's default argon2id hash is deliberately slow
/// and would turn every login into a stall.
const PURE_HASH: &str = "$6$pasvpeers$YVj4aiWnbnCK7vigo5cfllUgjz871pal56W3hr77u3j2NMpv/woml1hxEk.Y1hpAcBGtHRUJ.bZTQG/UuSiZ60";
/// Control ports of the TLS peers: 2141 and up (the plaintext fleet uses 2121 and up).
const CTL_BASE: u16 = 2141;
/// Transfers of the preflight of every target.
const PREFLIGHT_TRANSFERS: u64 = 3;

/// The development certificate of a run.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// PEM certificate (self-signed, `localhost` and `127.0.0.1`): also what `pasv load`
    /// trusts (`--ca-file`).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
    /// Key then certificate in one file (Pure-FTPd's `-2`).
    pub bundle: PathBuf,
}

/// Generates a self-signed certificate for `localhost` and `127.0.0.1` into `dir`.
pub fn dev_cert(dir: &Path) -> Result<DevCert> {
    std::fs::create_dir_all(dir)?;
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("generating the development certificate")?;
    let cert_pem = generated.cert.pem();
    let key_pem = generated.key_pair.serialize_pem();
    let c = DevCert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        bundle: dir.join("bundle.pem"),
    };
    std::fs::write(&c.cert, &cert_pem)?;
    write_private(&c.key, &key_pem)?;
    write_private(&c.bundle, &format!("{key_pem}{cert_pem}"))?;
    Ok(c)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Where and what a TLS peer serves.
pub struct PeerSetup<'a> {
    /// Control port on 127.0.0.1.
    pub port: u16,
    /// Passive range.
    pub range: (u16, u16),
    /// The served folder (read-only).
    pub root: &'a Path,
    /// Configuration, logs and PID files.
    pub run_dir: &'a Path,
    /// The certificate.
    pub cert: &'a DevCert,
}

/// vsftpd's configuration: anonymous, read-only, loopback, TLS required for logins and data,
/// and data connections must resume a TLS session (`require_ssl_reuse`).
pub fn vsftpd_conf(s: &PeerSetup<'_>) -> String {
    let mut c = String::from("# vsftpd FTPS peer: anonymous, read-only, loopback only\n");
    let lines = [
        "listen=YES".to_owned(),
        "listen_ipv6=NO".into(),
        "listen_address=127.0.0.1".into(),
        format!("listen_port={}", s.port),
        "background=NO".into(),
        "anonymous_enable=YES".into(),
        "no_anon_password=YES".into(),
        format!("anon_root={}", s.root.display()),
        "local_enable=NO".into(),
        "write_enable=NO".into(),
        "hide_ids=YES".into(),
        "pasv_enable=YES".into(),
        format!("pasv_min_port={}", s.range.0),
        format!("pasv_max_port={}", s.range.1),
        "port_enable=NO".into(),
        "connect_from_port_20=NO".into(),
        "max_clients=0".into(),
        "max_per_ip=0".into(),
        "xferlog_enable=NO".into(),
        "dirmessage_enable=NO".into(),
        "session_support=NO".into(),
        "tcp_wrappers=NO".into(),
        "use_localtime=NO".into(),
        format!(
            "secure_chroot_dir={}",
            s.run_dir.join("vsftpd-empty").display()
        ),
        format!(
            "vsftpd_log_file={}",
            s.run_dir.join("vsftpd.xfer.log").display()
        ),
        // FTPS: explicit (AUTH TLS), required for logins and data, anonymous included.
        "ssl_enable=YES".into(),
        "implicit_ssl=NO".into(),
        "allow_anon_ssl=YES".into(),
        "force_anon_logins_ssl=YES".into(),
        "force_anon_data_ssl=YES".into(),
        "force_local_logins_ssl=YES".into(),
        "force_local_data_ssl=YES".into(),
        "require_ssl_reuse=YES".into(),
        "ssl_sslv2=NO".into(),
        "ssl_sslv3=NO".into(),
        "ssl_tlsv1=YES".into(),
        // The built-in default is DES-CBC3-SHA alone (TLS 1.2 and below; TLS 1.3 suites are
        // OpenSSL's defaults either way).
        "ssl_ciphers=HIGH".into(),
        format!("rsa_cert_file={}", s.cert.cert.display()),
        format!("rsa_private_key_file={}", s.cert.key.display()),
    ];
    for l in lines {
        c.push_str(&l);
        c.push('\n');
    }
    c
}

/// ProFTPD's configuration (the kit's, plus mod_tls loaded from `module_dir`): TLS required
/// for control and data (`TLSRequired on`) and data connections must resume the control
/// session's TLS session (mod_tls's default without `NoSessionReuseRequired`).
pub fn proftpd_conf(s: &PeerSetup<'_>, module_dir: &Path) -> String {
    let run = s.run_dir;
    format!(
        "# proftpd FTPS peer: anonymous, read-only, loopback only\n\
         ModulePath            {modules}\n\
         <IfModule mod_dso.c>\n\
         \x20 LoadModule          mod_tls.c\n\
         </IfModule>\n\
         ServerName            \"proftpd peer\"\n\
         ServerType            standalone\n\
         DefaultServer         on\n\
         DefaultAddress        127.0.0.1\n\
         SocketBindTight       on\n\
         UseIPv6               off\n\
         Port                  {port}\n\
         PassivePorts          {lo} {hi}\n\
         MaxInstances          512\n\
         User                  nobody\n\
         Group                 nogroup\n\
         PidFile               {pid}\n\
         ScoreboardFile        {score}\n\
         SystemLog             {syslog}\n\
         TransferLog           none\n\
         WtmpLog               off\n\
         UseReverseDNS         off\n\
         DelayEngine           off\n\
         AuthOrder             mod_auth_unix.c\n\
         AuthPAM               off\n\
         ServerIdent           on \"proftpd peer ready.\"\n\
         TLSEngine             on\n\
         TLSLog                {tlslog}\n\
         TLSProtocol           TLSv1.2 TLSv1.3\n\
         TLSRequired           on\n\
         TLSECCertificateFile  {cert}\n\
         TLSECCertificateKeyFile {key}\n\
         TLSVerifyClient       off\n\
         TLSRenegotiate        none\n\
         <Anonymous {root}>\n\
         \x20 User                ftp\n\
         \x20 Group               nogroup\n\
         \x20 UserAlias           anonymous ftp\n\
         \x20 RequireValidShell   off\n\
         \x20 MaxClients          512\n\
         \x20 <Limit WRITE>\n\
         \x20   DenyAll\n\
         \x20 </Limit>\n\
         </Anonymous>\n",
        modules = module_dir.display(),
        port = s.port,
        lo = s.range.0,
        hi = s.range.1,
        pid = run.join("proftpd.daemon.pid").display(),
        score = run.join("proftpd.scoreboard").display(),
        syslog = run.join("proftpd.system.log").display(),
        tlslog = run.join("proftpd.tls.log").display(),
        cert = s.cert.cert.display(),
        key = s.cert.key.display(),
        root = s.root.display(),
    )
}

/// Pure-FTPd's arguments (the kit's, plus TLS): `-Y 3` refuses cleartext control and data
/// connections, `-2` names the key-and-certificate file. Pure-FTPd does not require data
/// connections to resume a TLS session.
pub fn pure_ftpd_args(s: &PeerSetup<'_>, pdb: &Path) -> Vec<String> {
    vec![
        "-S".into(),
        format!("127.0.0.1,{}", s.port),
        "-4".into(),
        "-p".into(),
        format!("{}:{}", s.range.0, s.range.1),
        "-l".into(),
        format!("puredb:{}", pdb.display()),
        "-E".into(),
        "-A".into(),
        "-H".into(),
        "-c".into(),
        "512".into(),
        "-C".into(),
        "512".into(),
        "-I".into(),
        "15".into(),
        "-f".into(),
        "none".into(),
        "-g".into(),
        s.run_dir.join("pure-ftpd.daemon.pid").display().to_string(),
        "-Y".into(),
        "3".into(),
        "-2".into(),
        s.cert.bundle.display().to_string(),
    ]
}

/// Pure-FTPd's virtual user line: `peer` as `uid:gid`, chrooted to `root`.
pub fn pure_passwd_line(root: &Path, uid: u32, gid: u32) -> String {
    format!(
        "{}:{PURE_HASH}:{uid}:{gid}::{}/./::::::::::::\n",
        PURE.0,
        root.display()
    )
}

/// The pyftpdlib FTPS peer: anonymous, read-only, TLS required on control and data.
/// Arguments: host port lo hi root certfile keyfile.
pub const PYFTPDLIB_TLS: &str = r#"# pyftpdlib FTPS peer for cargo xtask bench --peers --tls (loopback only).
import ipaddress
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer

host, port, lo, hi, root, cert, key = sys.argv[1:8]
if not ipaddress.ip_address(host).is_loopback:
    raise SystemExit("refusing non-loopback address %s" % host)
auth = DummyAuthorizer()
auth.add_anonymous(root, perm="elr")


class Handler(TLS_FTPHandler):
    pass


Handler.authorizer = auth
Handler.certfile = cert
Handler.keyfile = key
Handler.tls_control_required = True
Handler.tls_data_required = True
Handler.passive_ports = list(range(int(lo), int(hi) + 1))
Handler.banner = "pyftpdlib peer ready."
server = FTPServer((host, int(port)), Handler)
server.max_cons = 512
server.max_cons_per_ip = 0
server.serve_forever(handle_exit=True)
"#;

/// How a peer is started, or why it cannot be.
enum Launch {
    Ready {
        command: Box<Command>,
        user: &'static str,
        pass: &'static str,
    },
    Unavailable(String),
}

/// The numeric id of `name` in `/etc/passwd` or `/etc/group` (`file`).
fn id_of(file: &str, name: &str) -> Result<u32> {
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
        .with_context(|| format!("{name} not in {file}"))
}

/// Writes `name`'s configuration and returns its command line (not started yet).
fn launch(kit: &Kit, name: &str, s: &PeerSetup<'_>) -> Result<Launch> {
    let rootfs = Path::new(&kit.peers_home).join("root");
    Ok(match name {
        "vsftpd" => {
            let Some(vsftpd) = find_program("vsftpd") else {
                return Ok(Launch::Unavailable(
                    "vsftpd is not installed (peers.sh install)".into(),
                ));
            };
            let empty = s.run_dir.join("vsftpd-empty");
            std::fs::create_dir_all(&empty)?;
            let conf = s.run_dir.join("vsftpd.conf");
            std::fs::write(&conf, vsftpd_conf(s))?;
            let mut command = Command::new(vsftpd);
            command.arg(conf);
            Launch::Ready {
                command: Box::new(command),
                user: ANON.0,
                pass: ANON.1,
            }
        }
        "pure-ftpd" => {
            let bin = rootfs.join("usr/sbin/pure-ftpd");
            let pure_pw = rootfs.join("usr/bin/pure-pw");
            if !bin.is_file() || !pure_pw.is_file() {
                return Ok(Launch::Unavailable(
                    "pure-ftpd is not unpacked (peers.sh install)".into(),
                ));
            }
            let dir = s.run_dir.join("pure-ftpd");
            std::fs::create_dir_all(&dir)?;
            let passwd = dir.join("pureftpd.passwd");
            let pdb = dir.join("pureftpd.pdb");
            let _ = std::fs::remove_file(&pdb);
            write_private(
                &passwd,
                &pure_passwd_line(
                    s.root,
                    id_of("/etc/passwd", "nobody")?,
                    id_of("/etc/group", "nogroup")?,
                ),
            )?;
            let out = Command::new(&pure_pw)
                .arg("mkdb")
                .arg(&pdb)
                .arg("-f")
                .arg(&passwd)
                .output()
                .context("running pure-pw mkdb")?;
            if !out.status.success() {
                return Ok(Launch::Unavailable(format!(
                    "pure-pw mkdb failed: {}",
                    last_lines(&String::from_utf8_lossy(&out.stderr), 2)
                )));
            }
            let mut command = Command::new(bin);
            command.args(pure_ftpd_args(s, &pdb));
            Launch::Ready {
                command: Box::new(command),
                user: PURE.0,
                pass: PURE.1,
            }
        }
        "proftpd" => {
            let bin = rootfs.join("usr/sbin/proftpd");
            let modules = rootfs.join("usr/lib/proftpd");
            if !bin.is_file() {
                return Ok(Launch::Unavailable(
                    "proftpd is not unpacked (peers.sh install)".into(),
                ));
            }
            if !modules.join("mod_tls.so").is_file() {
                return Ok(Launch::Unavailable(format!(
                    "the unpacked ProFTPD has no mod_tls: not compiled in and no mod_tls.so in \
                     {} (Debian ships it in proftpd-mod-crypto, which the kit does not unpack)",
                    modules.display()
                )));
            }
            let conf = s.run_dir.join("proftpd.conf");
            std::fs::write(&conf, proftpd_conf(s, &modules))?;
            let mut command = Command::new(bin);
            command.arg("--nodaemon").arg("-c").arg(conf);
            Launch::Ready {
                command: Box::new(command),
                user: ANON.0,
                pass: ANON.1,
            }
        }
        "pyftpdlib" => {
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            let check = Command::new(&python)
                .args([
                    "-c",
                    "import OpenSSL; from pyftpdlib.handlers import TLS_FTPHandler",
                ])
                .output();
            match check {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    return Ok(Launch::Unavailable(format!(
                        "pyftpdlib's TLS_FTPHandler needs pyOpenSSL, which {python} cannot \
                         import ({})",
                        last_lines(&String::from_utf8_lossy(&out.stderr), 1)
                    )))
                }
                Err(e) => return Ok(Launch::Unavailable(format!("running {python}: {e}"))),
            }
            let script = s.run_dir.join("pyftpdlib_tls_peer.py");
            std::fs::write(&script, PYFTPDLIB_TLS)?;
            let mut command = Command::new(python);
            command.arg(script).args([
                "127.0.0.1".to_owned(),
                s.port.to_string(),
                s.range.0.to_string(),
                s.range.1.to_string(),
                s.root.display().to_string(),
                s.cert.cert.display().to_string(),
                s.cert.key.display().to_string(),
            ]);
            Launch::Ready {
                command: Box::new(command),
                user: ANON.0,
                pass: ANON.1,
            }
        }
        other => bail!("no FTPS configuration for peer {other}"),
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Start time of a process (clock ticks since boot): with the PID it names one process.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if matches!(f.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// Every descendant of `pid` with its start time.
fn descendants(pid: u32) -> Vec<(u32, u64)> {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            if let Some(pp) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            {
                parent.insert(p, pp);
            }
        }
    }
    let under = |mut p: u32| loop {
        match parent.get(&p) {
            Some(&pp) if pp == pid => return true,
            Some(&pp) if pp != 0 && pp != p => p = pp,
            _ => return false,
        }
    };
    parent
        .keys()
        .filter(|&&p| p != pid && under(p))
        .filter_map(|&p| Some((p, proc_start(p)?)))
        .collect()
}

/// A peer daemon started here, in its own process group (a Ctrl-C in the terminal does not
/// reach it); stopped with its session processes when dropped.
struct Peer {
    child: Child,
}

impl Peer {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The session processes, remembered before the daemon goes and they are re-parented;
        // each signalled by its PID only while it is the same process (start time).
        let kids = descendants(self.pid());
        let signal = |sig: &str, pids: &[(u32, u64)]| {
            let alive: Vec<String> = pids
                .iter()
                .filter(|(p, start)| proc_start(*p) == Some(*start))
                .map(|(p, _)| p.to_string())
                .collect();
            if !alive.is_empty() {
                let _ = Command::new("kill")
                    .arg(sig)
                    .args(&alive)
                    .stderr(Stdio::null())
                    .status();
            }
            alive.len()
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let mut stopped = false;
        for _ in 0..30 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        signal("-TERM", &kids);
        for _ in 0..20 {
            if signal("-0", &kids) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal("-KILL", &kids);
    }
}

/// Starts `command` on `cpu` in its own process group, output to `log`, and waits (at most
/// 10 s) until 127.0.0.1:`port` accepts connections.
fn start_peer(command: Command, cpu: Option<u32>, port: u16, log: &Path) -> Result<Peer> {
    let program = PathBuf::from(command.get_program());
    let output = std::fs::File::create(log)?;
    let mut c = on_cpu(cpu, &program);
    c.args(command.get_args())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.try_clone()?))
        .stderr(Stdio::from(output))
        .process_group(0);
    let child = c
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut peer = Peer { child };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if let Ok(Some(status)) = peer.child.try_wait() {
            let said = last_lines(&std::fs::read_to_string(log).unwrap_or_default(), 4);
            bail!("exited at start ({status}): {said}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(peer);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(peer);
    bail!("did not listen on {addr} within 10 s")
}

/// Three downloads over FTPS with one session: `Err` with the errors when any failed.
fn preflight(kit: &Kit, t: &LoadTarget, file: &str, ca: &Path) -> std::result::Result<(), String> {
    let run = LoadRun {
        file,
        k: 1,
        duration_s: 8.0,
        max_transfers: Some(PREFLIGHT_TRANSFERS),
        pin: false,
        tls_ca: Some(ca),
        rate: None,
        threads: 0,
    };
    let out = load_command(kit, t, &run)
        .args(["--timeout", "5", "--json"])
        .output()
        .map_err(|e| format!("running pasv load: {e}"))?;
    let d = load_json(&out.stdout, &t.label).map_err(|_| {
        format!(
            "pasv load printed no report: {}",
            last_lines(&String::from_utf8_lossy(&out.stderr), 3)
        )
    })?;
    let transfers = d["transfers"].as_u64().unwrap_or(0);
    if transfers >= PREFLIGHT_TRANSFERS {
        return Ok(());
    }
    let texts = error_texts(&d);
    Err(format!(
        "preflight: {transfers} of {PREFLIGHT_TRANSFERS} FTPS downloads completed{}",
        if texts.is_empty() {
            String::new()
        } else {
            format!("; errors: {texts}")
        }
    ))
}

/// `errors_by_text` of one report, most frequent first: `text (n); ...`.
fn error_texts(d: &Value) -> String {
    let mut v: Vec<(String, u64)> = d["errors_by_text"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.iter()
        .take(3)
        .map(|(k, n)| format!("{} ({n})", k.replace('|', "/")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The servers of one FTPS workload.
pub struct FtpsFleet {
    /// The servers that run (passed their preflight): peers first, then pasvd.
    pub targets: Vec<LoadTarget>,
    /// The servers that do not run, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// The run's certificate.
    pub cert: DevCert,
    peers: Vec<Peer>,
    children: Vec<Spawned>,
}

impl FtpsFleet {
    /// Starts every peer that has TLS and pasvd (prebound and per-lease) for `workload`,
    /// every one on CPU 1, and runs the preflight against each.
    pub fn start(kit: &Kit, workload: &Workload, run_dir: &Path) -> Result<FtpsFleet> {
        std::fs::create_dir_all(run_dir)?;
        let cert = dev_cert(&run_dir.join("tls"))?;
        let file = format!("f{}.bin", workload.file);
        kit.file(&file)?;
        let mut fleet = FtpsFleet {
            targets: Vec::new(),
            unavailable: Vec::new(),
            cert: cert.clone(),
            peers: Vec::new(),
            children: Vec::new(),
        };
        let cpu = Some(1);
        for (i, name) in PEERS.iter().enumerate() {
            let lo = 20000 + i as u16 * workload.ports.max(20);
            let setup = PeerSetup {
                port: CTL_BASE + i as u16,
                range: (lo, lo + workload.ports - 1),
                root: &kit.data,
                run_dir,
                cert: &cert,
            };
            if TcpListener::bind(("127.0.0.1", setup.port)).is_err() {
                fleet.unavailable.push((
                    (*name).into(),
                    format!("control port {} is taken by another program", setup.port),
                ));
                continue;
            }
            let (command, user, pass) = match launch(kit, name, &setup)? {
                Launch::Ready {
                    command,
                    user,
                    pass,
                } => (command, user, pass),
                Launch::Unavailable(why) => {
                    println!("{}: {name} not runnable: {why}", workload.name);
                    fleet.unavailable.push(((*name).into(), why));
                    continue;
                }
            };
            let log = run_dir.join(format!("{name}.log"));
            let peer = match start_peer(*command, cpu, setup.port, &log) {
                Ok(p) => p,
                Err(e) => {
                    println!("{}: {name} not runnable: {e:#}", workload.name);
                    fleet.unavailable.push(((*name).into(), format!("{e:#}")));
                    continue;
                }
            };
            let target = LoadTarget {
                label: (*name).into(),
                kind: "peer",
                port: setup.port,
                user: user.into(),
                pass: pass.into(),
                range: setup.range,
                pid: peer.pid(),
            };
            if fleet.admit(kit, target, &file) {
                fleet.peers.push(peer);
            }
        }
        let tls_args: Vec<String> = vec![
            "--tls-cert".into(),
            fleet.cert.cert.display().to_string(),
            "--tls-key".into(),
            fleet.cert.key.display().to_string(),
            "--tls-required".into(),
            "all".into(),
        ];
        let extra: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        for (label, mode, range) in [
            ("prebound", "prebound", workload.prebound_range),
            ("per-lease", "per-lease", workload.per_lease_range),
        ] {
            let label = format!("pasvd-{label}");
            let mut command = pasvd_command(&kit.pasvd, &kit.data, range, mode, &extra, cpu);
            command.env("RUST_BACKTRACE", "0");
            let log = run_dir.join(format!("{label}.log"));
            match Spawned::start_logged(command, "pasvd", &log) {
                Ok(server) => {
                    let target = LoadTarget {
                        label,
                        kind: "custom",
                        port: server.port,
                        user: "anonymous".into(),
                        pass: "pasv@example.invalid".into(),
                        range,
                        pid: server.pid(),
                    };
                    if fleet.admit(kit, target, &file) {
                        fleet.children.push(server);
                    }
                }
                Err(e) => {
                    println!("{}: {label} not runnable: {e:#}", workload.name);
                    fleet.unavailable.push((label, format!("{e:#}")));
                }
            }
        }
        Ok(fleet)
    }

    /// Keeps `t` when its preflight passes, else notes why not (the caller then stops it).
    fn admit(&mut self, kit: &Kit, t: LoadTarget, file: &str) -> bool {
        match preflight(kit, &t, file, &self.cert.cert) {
            Ok(()) => {
                self.targets.push(t);
                true
            }
            Err(why) => {
                println!("{} not runnable: {why}", t.label);
                self.unavailable.push((t.label, why));
                false
            }
        }
    }
}

impl Drop for FtpsFleet {
    fn drop(&mut self) {
        self.children.clear();
        self.peers.clear();
    }
}

/// A run that lasted more than this many times its duration was stretched by sessions that
/// waited for a reply at the end (a login the server neither answers nor refuses waits up to
/// `pasv load`'s 30 s timeout).
const STRETCHED: f64 = 1.5;

/// Rewrites the runs of `results` that `pasv load` stretched past `duration_s` (see
/// [`STRETCHED`]): their transfers/s become transfers over the run's duration (no transfer
/// starts after it, so every one of them took place in it), `pasv load`'s own figure is kept
/// as `transfers_per_s_elapsed`, and `stretched_s` says how long the run took.
pub fn rate_over_run(results: &str, duration_s: f64) -> Result<String> {
    let mut out = String::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        let mut d: Value = serde_json::from_str(line).context("results.jsonl")?;
        let elapsed = d["elapsed_s"].as_f64().unwrap_or(0.0);
        if elapsed > duration_s * STRETCHED {
            let transfers = d["transfers"].as_f64().unwrap_or(0.0);
            d["transfers_per_s_elapsed"] = d["transfers_per_s"].clone();
            d["transfers_per_s"] = (transfers / duration_s).into();
            d["stretched_s"] = elapsed.into();
            // The core's busy share spans the idle tail too: it says nothing about who
            // limited the run.
            d["server_core_busy"] = Value::Null;
            d["generator_bound"] = Value::Null;
            d["generator_saturated"] = Value::Null;
        }
        out.push_str(&d.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// One target's runs of an FTPS workload.
#[derive(Debug, Default)]
struct Runs {
    rates: Vec<f64>,
    us: Vec<f64>,
    process_us: Vec<f64>,
    busy: Vec<f64>,
    p99: Vec<f64>,
    /// Failed transfers and logins (`errors` of `pasv load`, 425s included).
    errors: u64,
    /// Sessions the server ended (their failure is in `errors` too).
    sessions_lost: u64,
    /// Passive replies outside the range.
    outside: u64,
    resumed: u64,
    full: u64,
    generator_bound: bool,
    /// The longest run that [`rate_over_run`] corrected, seconds.
    stretched_s: Option<f64>,
    texts: BTreeMap<String, u64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn read_runs(results: &str) -> Result<BTreeMap<String, Runs>> {
    let mut runs: BTreeMap<String, Runs> = BTreeMap::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        let d: Value = serde_json::from_str(line).context("results.jsonl")?;
        let Some((_, target)) = d["label"].as_str().and_then(|l| l.split_once(':')) else {
            continue;
        };
        let r = runs.entry(target.to_owned()).or_default();
        let push = |v: &mut Vec<f64>, x: &Value| {
            if let Some(x) = x.as_f64() {
                v.push(x);
            }
        };
        push(&mut r.rates, &d["transfers_per_s"]);
        push(&mut r.us, &d["server_us_per_transfer"]);
        push(&mut r.process_us, &d["server_process_us_per_transfer"]);
        push(&mut r.busy, &d["server_core_busy"]);
        push(&mut r.p99, &d["latency_ms"]["p99"]);
        r.errors += d["errors"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>());
        r.sessions_lost += d["sessions_lost"].as_u64().unwrap_or(0);
        r.outside += d["ports_outside_range"].as_u64().unwrap_or(0);
        r.resumed += d["tls_data_handshakes_resumed"].as_u64().unwrap_or(0);
        r.full += d["tls_data_handshakes_full"].as_u64().unwrap_or(0);
        r.generator_bound |= d["generator_bound"].as_bool() == Some(true);
        if let Some(s) = d["stretched_s"].as_f64() {
            r.stretched_s = Some(r.stretched_s.map_or(s, |x: f64| x.max(s)));
        }
        if let Some(m) = d["errors_by_text"].as_object() {
            for (k, v) in m {
                *r.texts.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(runs)
}

/// The note of a target's row: generator-bound, stretched runs.
fn note(r: &Runs, duration_s: u32) -> String {
    let mut notes = Vec::new();
    if r.generator_bound {
        notes.push("generator-bound".to_owned());
    }
    if let Some(s) = r.stretched_s {
        notes.push(format!(
            "a run took {s:.0} s (sessions waiting for replies): transfers/s over its {duration_s} s"
        ));
    }
    notes.join("; ")
}

/// The markdown report of an FTPS workload and the number of pasvd targets that missed the
/// target (>= `min_ratio` × the best peer's median transfers/s, zero errors; a pasvd that did
/// not run counts as missed). `targets` are the servers that ran (label and kind),
/// `unavailable` the others with their reason.
pub fn report(
    workload: &Workload,
    targets: &[(String, &str)],
    results: &str,
    unavailable: &[(String, String)],
) -> Result<(String, usize)> {
    let runs = read_runs(results)?;
    let rate = |label: &str| runs.get(label).and_then(|r| median(r.rates.clone()));
    let best_peer = targets
        .iter()
        .filter(|(_, kind)| *kind == "peer")
        .filter_map(|(l, _)| rate(l))
        .fold(None, |b: Option<f64>, m| Some(b.map_or(m, |b| b.max(m))));
    let f = |v: Option<f64>, digits: usize| v.map_or("-".into(), |x| format!("{x:.digits$}"));
    let share = |r: &Runs| {
        let all = r.resumed + r.full;
        if all == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.1}% ({} of {all})",
                100.0 * r.resumed as f64 / all as f64,
                r.resumed
            )
        }
    };
    let mut out = format!(
        "### {} (explicit FTPS, {} ports, K={}, {} RETR, `pasv load` on CPU 0, servers on CPU 1)\n\n\
         | target | median transfers/s | server µs/transfer | process µs/transfer | server core busy | p99 ms | errors | sessions ended | outside range | data handshakes resumed | vs best peer | note |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        workload.name, workload.ports, workload.k, workload.file
    );
    for (label, _) in targets {
        let Some(r) = runs.get(label) else {
            continue;
        };
        let m = rate(label);
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(m, 0),
            f(median(r.us.clone()), 1),
            f(median(r.process_us.clone()), 1),
            median(r.busy.clone()).map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
            f(median(r.p99.clone()), 2),
            r.errors,
            r.sessions_lost,
            r.outside,
            share(r),
            m.zip(best_peer)
                .map_or("-".into(), |(m, b)| format!("{:.2}x", m / b)),
            note(r, workload.duration_s)
        );
    }
    if !unavailable.is_empty() {
        out.push_str("\nNot runnable:\n\n");
        for (label, why) in unavailable {
            let _ = writeln!(out, "- {label}: {why}");
        }
    }
    let with_errors: Vec<(&String, &Runs)> = targets
        .iter()
        .filter_map(|(l, _)| Some((l, runs.get(l)?)))
        .filter(|(_, r)| !r.texts.is_empty())
        .collect();
    if !with_errors.is_empty() {
        out.push_str("\nErrors by text (summed over the rounds):\n\n");
        for (label, r) in with_errors {
            let mut texts: Vec<(&String, &u64)> = r.texts.iter().collect();
            texts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let list: Vec<String> = texts
                .iter()
                .take(4)
                .map(|(t, n)| format!("{t} ({n})"))
                .collect();
            let _ = writeln!(out, "- {label}: {}", list.join("; "));
        }
    }
    let _ = writeln!(
        out,
        "\n#### Targets: >= {}x the best peer, no error, no session ended, no port outside the range\n\n\
         | target | vs best peer | errors | sessions ended | outside range | data handshakes resumed | result |\n\
         |---|---|---|---|---|---|---|",
        workload.min_ratio
    );
    let mut missed = 0;
    for (label, _) in targets.iter().filter(|(_, kind)| *kind == "custom") {
        let Some(r) = runs.get(label) else {
            continue;
        };
        let ratio = rate(label).zip(best_peer).map(|(m, b)| m / b);
        let ok = ratio.is_some_and(|x| x >= workload.min_ratio)
            && r.errors == 0
            && r.sessions_lost == 0
            && r.outside == 0;
        if !ok {
            missed += 1;
        }
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.errors,
            r.sessions_lost,
            r.outside,
            share(r),
            if ok { "pass" } else { "MISSED" }
        );
    }
    for (label, _) in unavailable.iter().filter(|(l, _)| l.starts_with("pasvd")) {
        missed += 1;
        let _ = writeln!(
            out,
            "| {label} | - | - | - | - | - | not measured (not runnable) |"
        );
    }
    Ok((out, missed))
}

/// Runs one FTPS workload: the fleet, `rounds` interleaved rounds, the report
/// (`OUT/peers-NAME.md`, raw runs in `OUT/peers-NAME/`). Returns the targets missed and the
/// medians of the targets that ran.
pub fn run_workload(
    kit: &Kit,
    out: &Path,
    workload: &Workload,
    rounds: u32,
) -> Result<(usize, Vec<crate::peers::SummaryRow>)> {
    let dir = out.join(format!("peers-{}", workload.name));
    std::fs::create_dir_all(&dir)?;
    let fleet = FtpsFleet::start(kit, workload, &dir.join("run"))?;
    let file = format!("f{}.bin", workload.file);
    let load = LoadRun {
        file: &file,
        k: workload.k,
        duration_s: f64::from(workload.duration_s),
        max_transfers: None,
        pin: true,
        tls_ca: Some(&fleet.cert.cert),
        rate: None,
        threads: 0,
    };
    let results = measure_rounds(kit, &fleet.targets, &load, rounds, workload.name)?;
    let results = rate_over_run(&results, f64::from(workload.duration_s))?;
    let targets: Vec<(String, &str)> = fleet
        .targets
        .iter()
        .map(|t| (t.label.clone(), t.kind))
        .collect();
    let kinds: String = targets.iter().map(|(l, k)| format!("{l}\t{k}\n")).collect();
    std::fs::write(dir.join("results.jsonl"), &results)?;
    std::fs::write(dir.join("targets.tsv"), &kinds)?;
    let unavailable: String = fleet
        .unavailable
        .iter()
        .map(|(l, why)| format!("{l}\t{why}\n"))
        .collect();
    std::fs::write(dir.join("unavailable.tsv"), &unavailable)?;
    let (text, missed) = report(workload, &targets, &results, &fleet.unavailable)?;
    let summary = crate::peers::summarize(&fleet.targets, &results)?;
    drop(fleet);
    std::fs::write(out.join(format!("peers-{}.md", workload.name)), &text)?;
    println!("{text}");
    Ok((missed, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::WORKLOADS;

    fn setup<'a>(dir: &'a Path, cert: &'a DevCert) -> PeerSetup<'a> {
        PeerSetup {
            port: 2141,
            range: (20000, 20019),
            root: Path::new("/srv/data"),
            run_dir: dir,
            cert,
        }
    }

    fn fake_cert(dir: &Path) -> DevCert {
        DevCert {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            bundle: dir.join("bundle.pem"),
        }
    }

    fn keys(conf: &str) -> BTreeMap<&str, &str> {
        conf.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect()
    }

    #[test]
    fn vsftpd_requires_tls_and_session_reuse_for_anonymous_logins_and_data() {
        let dir = Path::new("/run/x");
        let cert = fake_cert(dir);
        let conf = vsftpd_conf(&setup(dir, &cert));
        let k = keys(&conf);
        for (key, want) in [
            ("ssl_enable", "YES"),
            ("allow_anon_ssl", "YES"),
            ("force_anon_logins_ssl", "YES"),
            ("force_anon_data_ssl", "YES"),
            ("force_local_data_ssl", "YES"),
            ("require_ssl_reuse", "YES"),
            ("implicit_ssl", "NO"),
            ("listen_address", "127.0.0.1"),
            ("listen_port", "2141"),
            ("pasv_min_port", "20000"),
            ("pasv_max_port", "20019"),
            ("anon_root", "/srv/data"),
            ("write_enable", "NO"),
            ("rsa_cert_file", "/run/x/cert.pem"),
            ("rsa_private_key_file", "/run/x/key.pem"),
        ] {
            assert_eq!(k.get(key), Some(&want), "{key} in\n{conf}");
        }
        // Every line is a key=value vsftpd knows the shape of (no stray text).
        assert!(conf
            .lines()
            .all(|l| l.starts_with('#') || l.split_once('=').is_some()));
    }

    #[test]
    fn pure_ftpd_refuses_cleartext_and_loads_the_bundle() {
        let dir = Path::new("/run/x");
        let cert = fake_cert(dir);
        let args = pure_ftpd_args(&setup(dir, &cert), Path::new("/run/x/p.pdb"));
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(String::as_str)
        };
        assert_eq!(after("-Y"), Some("3"), "{args:?}");
        assert_eq!(after("-2"), Some("/run/x/bundle.pem"), "{args:?}");
        assert_eq!(after("-S"), Some("127.0.0.1,2141"), "{args:?}");
        assert_eq!(after("-p"), Some("20000:20019"), "{args:?}");
        assert_eq!(after("-l"), Some("puredb:/run/x/p.pdb"), "{args:?}");
        let line = pure_passwd_line(Path::new("/srv/data"), 65534, 65533);
        assert!(
            line.starts_with("peer:$6$pasvpeers$") && line.contains(":65534:65533::/srv/data/./:"),
            "{line}"
        );
    }

    #[test]
    fn proftpd_loads_mod_tls_and_requires_tls_with_session_reuse() {
        let dir = Path::new("/run/x");
        let cert = fake_cert(dir);
        let conf = proftpd_conf(&setup(dir, &cert), Path::new("/opt/proftpd/modules"));
        let directive = |name: &str| {
            conf.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        assert_eq!(directive("ModulePath"), Some("/opt/proftpd/modules"));
        assert_eq!(directive("LoadModule"), Some("mod_tls.c"));
        assert_eq!(directive("TLSEngine"), Some("on"));
        assert_eq!(directive("TLSRequired"), Some("on"));
        assert_eq!(directive("TLSECCertificateFile"), Some("/run/x/cert.pem"));
        assert_eq!(directive("TLSECCertificateKeyFile"), Some("/run/x/key.pem"));
        assert_eq!(directive("Port"), Some("2141"));
        assert_eq!(directive("PassivePorts"), Some("20000 20019"));
        // Session reuse is mod_tls's default; the option that turns it off must not be there.
        assert!(!conf.contains("NoSessionReuseRequired"), "{conf}");
        assert!(conf.contains("<Anonymous /srv/data>"), "{conf}");
    }

    #[test]
    fn the_pyftpdlib_peer_requires_tls_on_both_channels() {
        for needle in [
            "TLS_FTPHandler",
            "tls_control_required = True",
            "tls_data_required = True",
            "Handler.certfile = cert",
            "Handler.keyfile = key",
            "is_loopback",
        ] {
            assert!(PYFTPDLIB_TLS.contains(needle), "{needle}");
        }
    }

    #[test]
    fn the_development_certificate_is_pem_and_the_bundle_holds_key_and_cert() {
        let dir = tempfile::tempdir().unwrap();
        let c = dev_cert(dir.path()).unwrap();
        let cert = std::fs::read_to_string(&c.cert).unwrap();
        let key = std::fs::read_to_string(&c.key).unwrap();
        let bundle = std::fs::read_to_string(&c.bundle).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        assert_eq!(bundle, format!("{key}{cert}"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&c.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }

    #[test]
    fn stretched_runs_count_their_transfers_over_the_run_duration() {
        let results = "{\"label\":\"r1:pure-ftpd\",\"transfers\":1849,\"elapsed_s\":31.1,\"transfers_per_s\":59.5,\"server_core_busy\":0.2,\"generator_bound\":true}\n\
                       {\"label\":\"r1:vsftpd\",\"transfers\":1547,\"elapsed_s\":5.2,\"transfers_per_s\":297.5}\n";
        let fixed = rate_over_run(results, 5.0).unwrap();
        let lines: Vec<Value> = fixed
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["transfers_per_s"], 369.8);
        assert_eq!(lines[0]["transfers_per_s_elapsed"], 59.5);
        assert_eq!(lines[0]["stretched_s"], 31.1);
        assert!(lines[0]["server_core_busy"].is_null() && lines[0]["generator_bound"].is_null());
        // Within 1.5 times the duration: pasv load's figure as it is.
        assert_eq!(lines[1]["transfers_per_s"], 297.5);
        assert!(lines[1].get("stretched_s").is_none());
        let w = WORKLOADS
            .iter()
            .find(|w| w.name == "ftps-20ports-k32")
            .unwrap();
        let targets = vec![
            ("pure-ftpd".to_owned(), "peer"),
            ("vsftpd".to_owned(), "peer"),
        ];
        let (table, _) = report(w, &targets, &fixed, &[]).unwrap();
        assert!(
            table.contains("| 370 |")
                && table.contains("a run took 31 s")
                && !table.contains("generator-bound"),
            "{table}"
        );
    }

    #[test]
    fn ids_are_read_from_passwd_style_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("passwd");
        std::fs::write(
            &f,
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        assert_eq!(id_of(f.to_str().unwrap(), "nobody").unwrap(), 65534);
        assert_eq!(id_of(f.to_str().unwrap(), "root").unwrap(), 0);
        assert!(id_of(f.to_str().unwrap(), "ftp").is_err());
    }

    /// One run's JSON line; `error` is (code, text, count).
    fn line(
        label: &str,
        rate: f64,
        error: Option<(&str, &str, u64)>,
        lost: u64,
        resumed: u64,
        full: u64,
    ) -> String {
        let (errors, texts) = match error {
            Some((code, text, n)) => (format!("\"{code}\":{n}"), format!("\"{text}\":{n}")),
            None => (String::new(), String::new()),
        };
        format!(
            "{{\"label\":\"{label}\",\"tls\":true,\"transfers_per_s\":{rate},\"server_us_per_transfer\":100.0,\
             \"server_core_busy\":0.95,\"generator_bound\":false,\"latency_ms\":{{\"p99\":2.0}},\
             \"errors\":{{{errors}}},\"errors_by_text\":{{{texts}}},\"sessions_lost\":{lost},\"ports_outside_range\":0,\
             \"tls_data_handshakes_resumed\":{resumed},\"tls_data_handshakes_full\":{full}}}\n"
        )
    }

    #[test]
    fn the_report_gives_resumption_errors_and_the_target_check() {
        let w = WORKLOADS
            .iter()
            .find(|w| w.name == "ftps-20ports-k32")
            .unwrap();
        assert!(w.tls && w.min_ratio == 1.5 && w.k == 32 && w.ports == 20);
        let mut results = String::new();
        for (round, (peer, fast)) in [(100.0, 160.0), (90.0, 170.0), (110.0, 150.0)]
            .into_iter()
            .enumerate()
        {
            let ended = Some(("io", "corrupt message", 1));
            results += &line(&format!("r{round}:vsftpd"), peer, ended, 1, 300, 0);
            let full = Some(("login_421", "login: 421 too many", 2));
            results += &line(&format!("r{round}:pure-ftpd"), 50.0, full, 0, 90, 10);
            results += &line(&format!("r{round}:pasvd-prebound"), fast, None, 0, 500, 0);
            results += &line(&format!("r{round}:pasvd-lossy"), fast, None, 1, 500, 0);
            let refused = Some(("425", "425 no port", 1));
            results += &line(
                &format!("r{round}:pasvd-per-lease"),
                fast,
                refused,
                0,
                500,
                0,
            );
        }
        let targets: Vec<(String, &str)> = vec![
            ("vsftpd".into(), "peer"),
            ("pure-ftpd".into(), "peer"),
            ("pasvd-prebound".into(), "custom"),
            ("pasvd-per-lease".into(), "custom"),
            ("pasvd-lossy".into(), "custom"),
        ];
        let unavailable = vec![
            ("proftpd".to_owned(), "no mod_tls".to_owned()),
            ("pasvd-busy".to_owned(), "refused to start".to_owned()),
        ];
        let (table, missed) = report(w, &targets, &results, &unavailable).unwrap();
        assert!(
            table.contains(
                "| vsftpd | 100 | 100.0 | - | 95% | 2.00 | 3 | 3 | 0 | 100.0% (900 of 900) | 1.00x |  |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| pure-ftpd | 50 | 100.0 | - | 95% | 2.00 | 6 | 0 | 0 | 90.0% (270 of 300) | 0.50x |  |"
            ),
            "{table}"
        );
        assert!(table.contains("- proftpd: no mod_tls"), "{table}");
        assert!(
            table.contains("- pure-ftpd: login: 421 too many (6)\n"),
            "{table}"
        );
        assert!(
            table.contains("- pasvd-per-lease: 425 no port (3)\n"),
            "{table}"
        );
        // prebound: 160/100 with no error passes; per-lease: as fast but 3 errors; lossy:
        // as fast, no failed transfer, but 3 sessions ended; the pasvd that did not start
        // counts as missed.
        assert!(
            table.contains("| pasvd-prebound | 1.60x | 0 | 0 | 0 | 100.0% (1500 of 1500) | pass |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| pasvd-per-lease | 1.60x | 3 | 0 | 0 | 100.0% (1500 of 1500) | MISSED |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| pasvd-busy | - | - | - | - | - | not measured (not runnable) |"),
            "{table}"
        );
        assert!(
            table.contains("| pasvd-lossy | 1.60x | 0 | 3 | 0 | 100.0% (1500 of 1500) | MISSED |"),
            "{table}"
        );
        assert_eq!(missed, 3, "{table}");
    }
}
