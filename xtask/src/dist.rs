//! `cargo xtask dist`: man pages and shell completions generated from the binaries' clap
//! definitions (`pasv_tools::cli`), the same structures the binaries parse with.
//!
//! Output, under `target/dist/` or the directory given with `--out`:
//! - `man/pasvd.1`, `man/pasvd-passwd.1`, `man/pasv.1` and one `man/pasv-<command>.1` per
//!   subcommand of `pasv`;
//! - `completions/pasvd.bash`, `completions/_pasvd` (zsh), `completions/pasvd.fish`, and the
//!   same three for `pasv`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The shells completions are written for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Parses `[--out DIR]` and writes the pages and completions.
pub fn run(args: &[String]) -> Result<()> {
    let mut out = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => {
                let dir = args.next().context("--out needs a directory")?;
                out = Some(PathBuf::from(dir));
            }
            other => bail!("unknown dist option `{other}`"),
        }
    }
    let out = out.unwrap_or_else(|| workspace_root().join("target").join("dist"));
    let written = generate(&out)?;
    for path in &written {
        println!("{}", path.display());
    }
    Ok(())
}

/// The workspace root: the parent of this package's directory.
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Writes the man pages under `out/man` and the completions under `out/completions`, and
/// returns the files written.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut written = Vec::new();
    for cmd in [
        pasv_tools::cli::pasvd::Cli::command(),
        pasv_tools::cli::pasv::Cli::command(),
    ] {
        let name = cmd.get_name().to_string();
        written.extend(man_pages(cmd.clone(), &man).with_context(|| format!("{name} pages"))?);
        for shell in SHELLS {
            let mut cmd = cmd.clone();
            let path = clap_complete::generate_to(shell, &mut cmd, &name, &completions)
                .with_context(|| format!("{name} completions for {shell}"))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// One page for the command and one per visible subcommand (`pasv-get.1`), each listing the
/// options it takes, the global ones included.
fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, written)?;
        }
        written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    walk(cmd, dir, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long flags a command takes, `--help` and `--version` aside.
    fn long_flags(cmd: &clap::Command) -> Vec<String> {
        cmd.get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version"))
            .map(|l| format!("--{l}"))
            .collect()
    }

    fn read(path: PathBuf) -> String {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // roff escapes every hyphen.
        text.replace("\\-", "-")
    }

    #[test]
    fn pages_and_completions_name_every_flag() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();

        let pasvd = pasv_tools::cli::pasvd::Cli::command();
        let flags = long_flags(&pasvd);
        for known in [
            "--run-as",
            "--proxy-protocol",
            "--max-passive-per-ip",
            "--check-config",
        ] {
            assert!(
                flags.iter().any(|f| f == known),
                "{known} not in the definition"
            );
        }
        let page = read(dir.path().join("man/pasvd.1"));
        let files = [
            page.clone(),
            read(dir.path().join("completions/pasvd.bash")),
            read(dir.path().join("completions/_pasvd")),
            read(dir.path().join("completions/pasvd.fish")),
        ];
        for flag in &flags {
            for (i, text) in files.iter().enumerate() {
                // fish names long options without their dashes: `-l run-as`.
                let found =
                    text.contains(flag.as_str()) || text.contains(&format!("-l {}", &flag[2..]));
                assert!(found, "{flag} missing from output {i} of pasvd");
            }
        }
        for env in pasvd.get_arguments().filter_map(|a| a.get_env()) {
            let env = env.to_string_lossy();
            assert!(page.contains(env.as_ref()), "{env} missing from pasvd.1");
        }
        assert!(
            page.contains("passwd"),
            "the passwd subcommand is not in pasvd.1"
        );
        read(dir.path().join("man/pasvd-passwd.1"));

        let mut pasv = pasv_tools::cli::pasv::Cli::command();
        pasv.build();
        let bash = read(dir.path().join("completions/pasv.bash"));
        for sub in pasv.get_subcommands().filter(|s| s.get_name() != "help") {
            let page = read(dir.path().join(format!("man/pasv-{}.1", sub.get_name())));
            for flag in long_flags(sub) {
                assert!(
                    page.contains(&flag),
                    "{flag} missing from pasv-{}.1",
                    sub.get_name()
                );
                assert!(bash.contains(&flag), "{flag} missing from pasv.bash");
            }
        }
        assert!(read(dir.path().join("man/pasv-get.1")).contains("--trust-pasv-ip"));
    }

    /// The bash completion, run by bash: completing each long flag of `pasvd` from all but
    /// its last letter offers that flag.
    #[test]
    fn bash_completes_every_pasvd_flag() {
        if std::process::Command::new("bash")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("SKIPPED bash_completes_every_pasvd_flag: no bash");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let flags = long_flags(&pasv_tools::cli::pasvd::Cli::command());
        let mut script = format!(
            "source {}\n",
            dir.path().join("completions/pasvd.bash").display()
        );
        for flag in &flags {
            let partial = &flag[..flag.len() - 1];
            script.push_str(&format!(
                "COMP_WORDS=(pasvd {partial}); COMP_CWORD=1; COMP_LINE='pasvd {partial}'; \
                 COMP_POINT=${{#COMP_LINE}}; COMPREPLY=(); _pasvd pasvd {partial} pasvd; \
                 echo \"{flag}: ${{COMPREPLY[*]}}\"\n"
            ));
        }
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &script])
            .output()
            .expect("bash runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for flag in &flags {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{flag}: ")))
                .unwrap_or_else(|| panic!("no completion run for {flag}: {text}"));
            assert!(
                line.split_whitespace().skip(1).any(|w| w == flag),
                "{flag} not offered: {line}"
            );
        }
    }

    /// `packaging/install.sh` lays out what a package holds, from the generated pages and
    /// completions and two stand-in binaries: the unit names the binary under the prefix,
    /// and an installed configuration file is kept.
    #[test]
    fn the_install_script_lays_out_a_package() {
        let dir = tempfile::tempdir().unwrap();
        let dist = dir.path().join("dist");
        generate(&dist).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for name in ["pasvd", "pasv"] {
            std::fs::write(bin.join(name), format!("#!/bin/sh\necho {name}\n")).unwrap();
        }
        let dest = dir.path().join("dest");
        let install = || {
            let status = std::process::Command::new("sh")
                .arg(workspace_root().join("packaging/install.sh"))
                .env("DESTDIR", &dest)
                .env("PREFIX", "/usr")
                .env("BIN_DIR", &bin)
                .env("DIST_DIR", &dist)
                .status()
                .expect("sh runs");
            assert!(status.success(), "install.sh: {status}");
        };
        install();
        for path in [
            "usr/bin/pasvd",
            "usr/bin/pasv",
            "usr/share/man/man1/pasvd.1",
            "usr/share/man/man1/pasv-get.1",
            "usr/share/bash-completion/completions/pasvd",
            "usr/share/bash-completion/completions/pasv",
            "usr/share/zsh/site-functions/_pasvd",
            "usr/share/fish/vendor_completions.d/pasv.fish",
            "usr/lib/systemd/system/pasvd.service",
            "usr/lib/sysusers.d/pasvd.conf",
            "usr/lib/tmpfiles.d/pasvd.conf",
            "usr/share/doc/pasvd/DEPLOYMENT.md",
            "etc/pasvd/pasvd.toml",
        ] {
            assert!(dest.join(path).is_file(), "{path} not installed");
        }
        let unit = read(dest.join("usr/lib/systemd/system/pasvd.service"));
        assert!(
            unit.lines()
                .any(|l| l == "ExecStart=/usr/bin/pasvd --config /etc/pasvd/pasvd.toml"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local/bin"), "{unit}");

        let config = dest.join("etc/pasvd/pasvd.toml");
        std::fs::write(&config, "# changed here\n").unwrap();
        install();
        assert_eq!(read(config), "# changed here\n");
    }
}
