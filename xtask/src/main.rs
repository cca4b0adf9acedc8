//! Workspace automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask bench [--quick] [--filter REGEX]     criterion benches + their targets
//! cargo xtask bench --peers KIT [--generator pasv|python] [--pin] [--quick]  pasvd beside the peers
//!     [--busy-poll-us N] [--workload NAME]... [--peers-only] [--baseline PASVD]
//! cargo xtask bench --peers KIT --peers-only --tls  the same over explicit FTPS (peers with TLS)
//! cargo xtask bench --strategies                  pool strategies × load, docs/strategies.svg
//! cargo xtask bench --peers KIT --peers-only --plot     + throughput against K, docs/peers*.svg
//! cargo xtask bench --peers KIT --syscalls [--transfers N]  syscalls and wake-ups per transfer
//! cargo xtask bench --peers KIT --memory [--sessions N]     memory per session and transfer
//! cargo xtask bench --peers KIT --peers-only --contended    generator and servers unpinned
//! cargo xtask bench --peers KIT --peers-only --workload 1000ports-k8-rate [--rates R1,R2]
//!                                                 tail latency at fixed offered rates
//! cargo xtask dist [--out DIR]                   man pages and shell completions
//! ```
//!
//! Results go to `target/pasv-bench/`: `criterion.md` (every benchmark's mean and throughput,
//! then the targets with pass/fail) and, with `--peers`, one `peers-<workload>.md` per workload
//! (the comparison kit's report; `peers-ftps-*.md` for the FTPS workloads of `--tls`, see
//! [`ftps`]). `dist` writes to `target/dist/` (see [`dist`]).

mod bench;
mod dist;
mod fleet;
mod ftps;
mod model;
mod peers;
mod plot;
mod strategies;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        print_help();
        return Ok(());
    };
    let rest: Vec<String> = args.collect();
    let wants_help = rest.iter().any(|a| a == "--help" || a == "-h");
    match command.as_str() {
        "bench" | "dist" | "model-check" if wants_help => {
            print_help();
            Ok(())
        }
        "bench" => bench::run(&rest),
        "dist" => dist::run(&rest),
        "model-check" => model::run_model_check(&rest),
        "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => bail!("unknown command `{other}`; try `cargo xtask help`"),
    }
}

fn print_help() {
    println!(
        "cargo xtask bench [--quick] [--filter REGEX] [--peers KIT] [--strategies]\n\
         cargo xtask dist [--out DIR]\n\
         cargo xtask model-check [--quick] [--force]\n\
         \n\
         model-check  client and server in two network namespaces (needs root; skipped\n\
         \x20       otherwise): onset of refusals against rate_max, which side holds\n\
         \x20       TIME_WAIT after RETR and STOR, the ledger against the kernel. About\n\
         \x20       2.5 min (--quick: 1.5). Writes target/model-check/.\n\
         \n\
         bench   runs the criterion benches (package pasv-benches), prints every result and\n\
         \x20       checks the targets; writes target/pasv-bench/criterion.md.\n\
         \x20       --quick        shorter warm-up and measurement (noisier)\n\
         \x20       --filter RE    only benchmarks whose id matches RE (criterion's filter)\n\
         \x20       --peers KIT    also run pasvd (release) beside vsftpd, pure-ftpd, proftpd,\n\
         \x20                      pyftpdlib (started with KIT/peers.sh) on three workloads,\n\
         \x20                      interleaved: `pasv load` on CPU 0, servers on CPU 1, and the\n\
         \x20                      server core's busy time per transfer from /proc/stat (a run\n\
         \x20                      below 90% busy is marked generator-bound); writes\n\
         \x20                      target/pasv-bench/peers-*.md\n\
         \x20       --generator python  KIT/compare.sh and its ftpload.py instead\n\
         \x20       --rounds N     rounds per peer workload [3], odd ones in the listed order of\n\
         \x20                      the servers, even ones in reverse\n\
         \x20       --pin          (python generator) generator on CPU 0, servers on CPU 1\n\
         \x20       --busy-poll-us N  also a prebound pasvd with --busy-poll-us N\n\
         \x20       --workload NAME   only this workload (20ports-k32, 1000ports-k8,\n\
         \x20                         1mib-retr-k8, 1000ports-k8-rate, 1000ports-k32-rate,\n\
         \x20                         ftps-20ports-k32, ftps-1mib-retr-k8); repeatable\n\
         \x20       --rates R1,R2  offered rates of the *-rate workloads [2000,5000]: `pasv load\n\
         \x20                      --rate`, latency from each transfer's scheduled start;\n\
         \x20                      per rate achieved/offered, p50/p99/p99.9, server µs per\n\
         \x20                      transfer, pasvd's p99 over the best peer's (a server\n\
         \x20                      below 99% of the rate is overloaded, not compared)\n\
         \x20       --baseline BIN (--peers) also BIN, an earlier pasvd build, in the default\n\
         \x20                      mode, interleaved; the report compares it with this build\n\
         \x20                      and counts a figure that dropped by more than 5% as missed\n\
         \x20       --tls          (--peers) the FTPS workloads instead (ftps-20ports-k32,\n\
         \x20                      ftps-1mib-retr-k8): explicit FTPS with PROT P, `pasv load`\n\
         \x20                      over ftpes:// trusting a certificate made for the run;\n\
         \x20                      vsftpd (require_ssl_reuse), pure-ftpd (-Y 3), proftpd\n\
         \x20                      (mod_tls, if unpacked), pyftpdlib (if pyOpenSSL) and pasvd\n\
         \x20                      (--tls-required all) configured for TLS by the xtask; a\n\
         \x20                      server that cannot run is reported as not runnable;\n\
         \x20                      writes target/pasv-bench/peers-ftps-*.md\n\
         \x20       --peers-only   skip the criterion benches\n\
         \x20       --plot         (--peers) then transfers/s against K = 1, 8, 32, 128 on 20\n\
         \x20                      and 1000 ports; writes docs/peers.svg and docs/peers-k.svg\n\
         \x20       --contended    (--peers) generator and servers unpinned on both cores\n\
         \x20       --load-threads N  (--contended) `pasv load`'s threads (event loops) [1: as\n\
         \x20                      on its CPU when pinned]; 0, one per CPU\n\
         \x20       --syscalls     (--peers) instead of the workloads: syscalls (strace -c -f)\n\
         \x20                      and context switches (perf stat) per transfer of every\n\
         \x20                      server, 1000 ports, K=8; target/pasv-bench/syscalls.md\n\
         \x20       --transfers N  transfers counted by --syscalls [4000]\n\
         \x20       --memory       (--peers) instead of the workloads: memory of every server\n\
         \x20                      with N idle sessions, then N/4 of them downloading;\n\
         \x20                      target/pasv-bench/memory.md\n\
         \x20       --sessions N   idle sessions of --memory [200]\n\
         \x20       --strategies   instead of the criterion benches: every pool strategy\n\
         \x20                      × load through the simulator against Erlang B (the table\n\
         \x20                      of `pasv simulate`), target/pasv-bench/strategies.txt and\n\
         \x20                      the plot docs/strategies.svg\n\
         \n\
         dist    writes man pages (man/pasvd.1, man/pasv.1, man/pasv-<command>.1, ...) and\n\
         \x20       bash, zsh and fish completions (completions/) generated from the clap\n\
         \x20       definitions, under target/dist/ or --out DIR"
    );
}
