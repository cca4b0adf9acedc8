//! The command line of `pasv`, the client: global options, subcommands and their arguments.
//!
//! The `pasv` binary parses it; `cargo xtask dist` renders it as man pages and shell
//! completions, so the two cannot drift apart.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{load, DataMode};

/// An FTP client for passive-mode work: transfers, load generation, probing and planning.
#[derive(Debug, Parser)]
#[command(name = "pasv", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The exit codes, printed after the help.
pub const EXIT_CODES: &str =
    "Exit codes: 0 ok, 1 usage or local precondition (including --max-size), 2 permanent FTP \
error (5xx), 3 transient FTP error (4xx, also after retries), 4 network or I/O error (also \
after retries).";

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// How data connections are set up [default: auto; pasv for load and probe].
    #[arg(long, global = true, value_enum)]
    pub mode: Option<Mode>,
    /// Shorthand for --mode active (PORT/EPRT).
    #[arg(long, global = true)]
    pub active: bool,
    /// Connect to the address a 227 reply advertises instead of the control connection's peer.
    #[arg(long, global = true)]
    pub trust_pasv_ip: bool,
    /// Attempts for a 421 greeting, 425 or 426, the first included (1 = no retry).
    #[arg(long, global = true, default_value_t = 5)]
    pub attempts: u32,
    /// Seconds after the first attempt beyond which no retry starts.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub retry_budget: f64,
    /// Seconds to wait for each reply (and for the final one after 1xx replies), to open a data
    /// connection, and for each read or write on it to make progress.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub timeout: f64,
    /// SO_RCVBUF/SO_SNDBUF for data sockets, bytes (k/m suffixes); default: kernel autotuning.
    #[arg(long, global = true, value_parser = parse_size)]
    pub socket_buffer: Option<u64>,
    /// FTPS with AUTH TLS on an ftp:// URL (as ftpes://); ftps:// is implicit TLS.
    #[arg(long, global = true)]
    pub tls: bool,
    /// FTPS: trust the certificates of this PEM file instead of the system's roots.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// FTPS: accept any certificate for any name. For tests only: anyone on the path can
    /// read and change the session.
    #[arg(long, global = true, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// No progress bar, no informational messages.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log protocol events to stderr (RUST_LOG syntax also works).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How data connections are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// EPSV, then PASV once the server refuses EPSV.
    Auto,
    /// PASV only.
    Pasv,
    /// EPSV only.
    Epsv,
    /// PORT/EPRT: the server connects to us.
    Active,
}

impl Mode {
    /// The client library's data-connection mode for this choice.
    pub fn data_mode(self) -> DataMode {
        match self {
            Mode::Auto => DataMode::Auto,
            Mode::Pasv => DataMode::Pasv,
            Mode::Epsv => DataMode::Epsv,
            Mode::Active => DataMode::Active,
        }
    }
}

/// How an interrupted upload is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResumeUpload {
    /// APPE: append the rest (curl's way).
    Appe,
    /// REST offset + STOR (ftplib's way).
    Rest,
}

/// The subcommands of `pasv`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List a directory (LIST by default).
    Ls {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
        /// Names only (NLST).
        #[arg(long, conflicts_with = "mlsd")]
        names: bool,
        /// Machine listing (MLSD), printed as type, size, modify time and name.
        #[arg(long)]
        mlsd: bool,
    },
    /// Download a file.
    Get {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
        /// Local file ("-" for stdout); default: the remote file's name.
        output: Option<PathBuf>,
        /// Resume: fetch only what the local file lacks (REST).
        #[arg(short = 'c', long = "continue")]
        resume: bool,
        /// Refuse a file larger than this many bytes (k/m/g suffixes): before RETR when SIZE
        /// tells, during the transfer otherwise (exit 1).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Upload a file.
    Put {
        /// `ftp://[user[:pass]@]host[:port]/path` (a path ending in / takes the local name)
        url: String,
        /// Local file.
        input: PathBuf,
        /// Resume: send only what the remote file lacks (SIZE, then APPE or REST + STOR).
        #[arg(short = 'c', long = "continue")]
        resume: bool,
        /// How to resume an upload.
        #[arg(long, value_enum, default_value_t = ResumeUpload::Appe)]
        resume_with: ResumeUpload,
    },
    /// Delete a file (DELE).
    Rm {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
    },
    /// Rename (RNFR + RNTO).
    Mv {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
        /// New path (relative to the login directory), or an ftp:// URL on the same server.
        to: String,
    },
    /// Create a directory (MKD).
    Mkdir {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
    },
    /// Remove a directory (RMD).
    Rmdir {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
    },
    /// Print a file's size in bytes (SIZE).
    Size {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
    },
    /// Print a file's modification time, YYYYMMDDHHMMSS in UTC (MDTM).
    Mdtm {
        /// `ftp://[user[:pass]@]host[:port]/path`
        url: String,
    },
    /// Load generator: K sessions looping transfers, back to back or at a fixed offered rate
    /// (--rate).
    Load(LoadArgs),
    /// Infer a server's passive-port behaviour from the outside.
    Probe(ProbeArgs),
    /// Capacity planner for a passive range.
    Plan(PlanArgs),
    /// Simulate pool strategies under load against Erlang B (strategies × load table).
    Simulate(super::simulate::SimulateArgs),
    /// On the server's host: the kernel's TCP tables on a passive range against the host's
    /// limits, and the server's own ledger check (SITE POOL or metrics). Exit 1 on a warning
    /// or a disagreement.
    Doctor(DoctorArgs),
    /// Decode raw bytes from stdin as replies or commands, one JSON object per line.
    Decode {
        /// What the bytes are.
        #[arg(value_enum)]
        kind: DecodeKind,
    },
}

/// What `pasv decode` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecodeKind {
    /// Server replies.
    Reply,
    /// Client commands.
    Command,
}

/// The arguments of `pasv load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// `ftp://[user[:pass]@]host[:port]/file` (RETR fetches the file; LIST lists its directory)
    pub url: String,
    /// Concurrent sessions.
    #[arg(short = 'k', long, default_value_t = 8)]
    pub sessions: usize,
    /// Seconds to run (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many transfer attempts.
    #[arg(long)]
    pub max_transfers: Option<u64>,
    /// Open loop: offer this many transfers per second at fixed intervals, each taken by the
    /// first free session, latency counted from its scheduled start (at most 1000000).
    #[arg(long)]
    pub rate: Option<load::Rate>,
    /// Operation weights, e.g. retr=8,stor=1,list=1.
    #[arg(long, default_value = "retr=1")]
    pub mix: load::Mix,
    /// Bytes per STOR (and the size RETR must return with --expect-size).
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    pub size: u64,
    /// Count a RETR of another length than --size as an error.
    #[arg(long)]
    pub expect_size: bool,
    /// Remote path for STOR ({session} is the session number).
    #[arg(long, default_value = "upload/pasv-load-{session}.bin")]
    pub stor_path: String,
    /// Delete each session's STOR file at the end.
    #[arg(long)]
    pub delete_after: bool,
    /// The server's passive range; offers outside it are counted.
    #[arg(long, value_parser = parse_range)]
    pub expect_range: Option<(u16, u16)>,
    /// Threads, each running an event loop of its own with every N-th session (no work
    /// moves between them; never more than -k): 0 (the default) runs one per CPU this process
    /// may use, so a load pinned to one CPU (`taskset -c 0`) runs single-threaded, its
    /// cheapest. At most 1024.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `pasv probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// `ftp://[user[:pass]@]host[:port]/dir` (the directory listed in the transfer phase)
    pub url: String,
    /// Passive requests without connecting.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Listings, to see whether just-closed ports come back.
    #[arg(long, default_value_t = 40)]
    pub transfers: usize,
    /// Most extra sessions holding a passive listener when pushing (0: no push).
    #[arg(long, default_value_t = 64)]
    pub push: usize,
    /// Quarantine assumed for the capacity estimates, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub time_wait: f64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `pasv doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Passive range LO-HI.
    #[arg(long, value_parser = parse_range)]
    pub ports: (u16, u16),
    /// Passive address (default: every address).
    #[arg(long, default_value = "0.0.0.0")]
    pub address: std::net::IpAddr,
    /// The kernel's TIME_WAIT length, seconds (Linux: 60).
    #[arg(long, default_value_t = 60.0)]
    pub time_wait: f64,
    /// Ask the server: `ftp://admin:password@host:port/` (an account with `admin = true`),
    /// whose `SITE POOL` reply is printed.
    #[arg(long)]
    pub server: Option<String>,
    /// Ask the server's metrics endpoint instead: HOST:PORT of `--metrics`.
    #[arg(long, conflicts_with = "server")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `pasv plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Passive range LO-HI.
    #[arg(long, value_parser = parse_range)]
    pub ports: (u16, u16),
    /// Local addresses the range is available on.
    #[arg(long, default_value_t = 1)]
    pub addresses: u64,
    /// Quarantine after a server-side close, seconds (Linux TIME_WAIT: 60).
    #[arg(long)]
    pub time_wait: f64,
    /// Mean lease time (listen + transfer), seconds.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Fraction of transfers the server closes first (1 for downloads, 0 for uploads).
    #[arg(long, default_value_t = 1.0)]
    pub server_close: f64,
    /// Target rate, transfers per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Acceptable refusal rate when sizing the range (0.001 = 0.1%).
    #[arg(long, default_value_t = 0.001)]
    pub target_refusal: f64,
    /// Seconds an arrival may wait for a port before refusal, for the simulated case
    /// (pasvd's pasv_wait; 0 = refuse at once).
    #[arg(long, default_value_t = 2.0)]
    pub max_wait: f64,
    /// Print one JSON object instead of the summary and chart.
    #[arg(long)]
    pub json: bool,
    /// No chart.
    #[arg(long)]
    pub no_chart: bool,
}

/// Parses a port range `LOW-HIGH` (1..=65535, LOW <= HIGH).
pub fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("expected LO-HI, got {s:?}"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("bad port {lo:?}"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("bad port {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("range {lo}-{hi} is empty or starts at 0"));
    }
    Ok((lo, hi))
}

/// Parses a byte count with an optional k, m or g suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, mult) = match t.strip_suffix(['k', 'm', 'g']) {
        Some(d) if t.ends_with('k') => (d, 1u64 << 10),
        Some(d) if t.ends_with('m') => (d, 1 << 20),
        Some(d) => (d, 1 << 30),
        None => (t.as_str(), 1),
    };
    let n: u64 = digits.parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_sizes() {
        assert_eq!(parse_range("30000-30019"), Ok((30000, 30019)));
        assert!(parse_range("30019-30000").is_err());
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("1-70000").is_err());
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }
}
