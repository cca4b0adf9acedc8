//! Serving as an unprivileged account: the account `run_as` names, resolved from
//! `/etc/passwd` and `/etc/group`, and the switch to it once the sockets are bound.
//!
//! Linux keeps credentials per thread. The `setgroups`, `setresgid` and `setresuid` system
//! calls change the calling thread only; glibc's wrappers make the change process-wide by
//! signalling every other thread, rustix (like the kernel) does not. So the switch runs while
//! the process has a single thread — before the log flusher and the tokio runtime start
//! theirs — and refuses to run otherwise; every thread started later inherits the
//! credentials of the thread that starts it.
//!
//! Accounts are read from the two files only, not through NSS (which would need libc's
//! `getpwnam` and `unsafe`): a service account is a local account.

use std::fs;

use rustix::process::{getegid, geteuid, getgid, getgroups, getuid, Gid, Uid};
use rustix::thread::{
    capabilities, set_thread_gid, set_thread_groups, set_thread_res_gid, set_thread_res_uid,
    set_thread_uid, CapabilitySet,
};

/// A local account: its ids and the groups it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
    /// The supplementary groups: the primary group, then every group of `/etc/group` that
    /// lists the account as a member (what `initgroups(3)` sets).
    pub(crate) groups: Vec<Gid>,
}

impl Account {
    /// Resolves `name` from `/etc/passwd` and `/etc/group`.
    pub(crate) fn lookup(name: &str) -> Result<Account, String> {
        let read =
            |path: &str| fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
        Account::from_files(name, &read("/etc/passwd")?, &read("/etc/group")?)
    }

    /// Resolves `name` from the text of a passwd and a group file.
    fn from_files(name: &str, passwd: &str, group: &str) -> Result<Account, String> {
        let id = |field: Option<&str>, what: &str, line: usize| {
            field
                .and_then(|f| f.parse::<u32>().ok())
                .filter(|&id| id != u32::MAX)
                .ok_or_else(|| format!("/etc/passwd line {line}: bad {what}"))
        };
        let (uid, gid) = entries(passwd)
            .find(|(_, fields)| fields.first() == Some(&name))
            .map(|(line, fields)| {
                Ok::<_, String>((
                    id(fields.get(2).copied(), "uid", line)?,
                    id(fields.get(3).copied(), "gid", line)?,
                ))
            })
            .ok_or_else(|| format!("no user {name:?} in /etc/passwd"))??;
        if uid == 0 || gid == 0 {
            return Err(format!(
                "{name:?} is uid {uid}, gid {gid}: run_as must name an account other than root \
                 and outside the root group"
            ));
        }
        let mut groups = vec![Gid::from_raw(gid)];
        for (line, fields) in entries(group) {
            let member = fields
                .get(3)
                .is_some_and(|m| m.split(',').any(|m| m.trim() == name));
            if member {
                let gid = fields
                    .get(2)
                    .and_then(|f| f.parse::<u32>().ok())
                    .filter(|&id| id != u32::MAX)
                    .ok_or_else(|| format!("/etc/group line {line}: bad gid"))?;
                if !groups.contains(&Gid::from_raw(gid)) {
                    groups.push(Gid::from_raw(gid));
                }
            }
        }
        Ok(Account {
            name: name.to_owned(),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            groups,
        })
    }

    fn raw_groups(&self) -> Vec<u32> {
        let mut raw: Vec<u32> = self.groups.iter().map(|g| g.as_raw()).collect();
        raw.sort_unstable();
        raw
    }
}

/// The `:`-separated entries of a passwd or group file, with their line numbers; comments,
/// blank lines and NIS `+`/`-` lines skipped.
fn entries(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim_end();
        let skip = line.is_empty() || line.starts_with(['#', '+', '-']);
        (!skip).then(|| (i + 1, line.split(':').collect()))
    })
}

/// Makes `account` the process's only identity: supplementary groups, then the group ids,
/// then the user ids (real, effective and saved), and checks that there is no way back.
/// Refuses if the process runs more than one thread (see the module docs). When the process
/// already runs as the account (a service manager started it so), only the checks run.
pub(crate) fn switch_to(account: &Account) -> Result<(), String> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(format!(
            "the process already runs {threads} threads; the switch must happen before any \
             other thread starts"
        ));
    }
    let (uid, gid) = (account.uid, account.gid);
    let already = getuid() == uid && geteuid() == uid && getgid() == gid && getegid() == gid;
    if !already {
        if !geteuid().is_root() {
            return Err(format!(
                "switching accounts needs root, and the server runs as uid {}",
                geteuid().as_raw()
            ));
        }
        set_thread_groups(&account.groups).map_err(|e| format!("setgroups: {e}"))?;
        set_thread_res_gid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
        set_thread_res_uid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    }
    verify(account, !already)
}

/// Checks the credentials after a switch: every user and group id (real, effective, saved
/// and file system, as the kernel reports them), the supplementary groups, that setuid(0)
/// and setgid(0) fail, and (after a switch from root) that no capability is left.
fn verify(account: &Account, switched: bool) -> Result<(), String> {
    let (uid, gid) = (account.uid.as_raw(), account.gid.as_raw());
    if getuid().as_raw() != uid
        || geteuid().as_raw() != uid
        || getgid().as_raw() != gid
        || getegid().as_raw() != gid
    {
        return Err(format!(
            "after the switch: uid {}, euid {}, gid {}, egid {}",
            getuid().as_raw(),
            geteuid().as_raw(),
            getgid().as_raw(),
            getegid().as_raw()
        ));
    }
    let status = fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| format!("cannot read /proc/thread-self/status: {e}"))?;
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    if ids("Uid:") != [uid; 4] || ids("Gid:") != [gid; 4] {
        return Err(format!(
            "after the switch the kernel reports Uid {:?} and Gid {:?}",
            ids("Uid:"),
            ids("Gid:")
        ));
    }
    let mut groups: Vec<u32> = getgroups()
        .map_err(|e| format!("getgroups: {e}"))?
        .iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    if groups != account.raw_groups() {
        return Err(format!(
            "after the switch the groups are {groups:?}, not {:?}",
            account.raw_groups()
        ));
    }
    if set_thread_uid(Uid::ROOT).is_ok() || set_thread_gid(Gid::ROOT).is_ok() {
        return Err("setuid(0) or setgid(0) still succeeds after the switch".to_owned());
    }
    if switched {
        let caps = capabilities(None).map_err(|e| format!("capget: {e}"))?;
        if caps.effective != CapabilitySet::empty() || caps.permitted != CapabilitySet::empty() {
            return Err(format!(
                "capabilities left after the switch: {:?}",
                caps.permitted
            ));
        }
    }
    Ok(())
}

/// The number of threads of this process, from `/proc/self/status`.
fn thread_count() -> Result<usize, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "no thread count in /proc/self/status".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        \n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        ftp:x:107:113:ftp daemon,,,:/srv/ftp:/usr/sbin/nologin\n\
        wheelie:x:1001:0::/home/wheelie:/bin/sh\n\
        broken:x:abc:100::/:/bin/sh\n\
        +nis\n";
    const GROUP: &str = "root:x:0:\n\
        adm:x:4:syslog,ftp\n\
        nogroup:x:65534:\n\
        ftp:x:113:\n\
        www:x:33:alice, ftp\n\
        ftpish:x:500:ftpuser\n";

    fn gids(raw: &[u32]) -> Vec<Gid> {
        raw.iter().map(|&g| Gid::from_raw(g)).collect()
    }

    #[test]
    fn resolves_ids_and_member_groups() {
        let ftp = Account::from_files("ftp", PASSWD, GROUP).unwrap();
        assert_eq!(ftp.uid, Uid::from_raw(107));
        assert_eq!(ftp.gid, Gid::from_raw(113));
        // The primary group first, once; member groups in file order; a name that only
        // starts like the account's is not a match.
        assert_eq!(ftp.groups, gids(&[113, 4, 33]));
        let nobody = Account::from_files("nobody", PASSWD, GROUP).unwrap();
        assert_eq!(nobody.groups, gids(&[65534]));
    }

    #[test]
    fn refuses_unknown_root_and_malformed_accounts() {
        let err = Account::from_files("nosuchuser", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("no user \"nosuchuser\""), "{err}");
        assert!(Account::from_files("root", PASSWD, GROUP).is_err());
        assert!(Account::from_files("wheelie", PASSWD, GROUP).is_err());
        let err = Account::from_files("broken", PASSWD, GROUP).unwrap_err();
        assert!(err.contains("line 7: bad uid"), "{err}");
        // NIS lines are not accounts.
        assert!(Account::from_files("+nis", PASSWD, GROUP).is_err());
    }

    #[test]
    fn a_switch_in_a_threaded_process_is_refused() {
        // A second thread, alive until the check is done, whatever the harness does.
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = wait.recv();
        });
        let nobody = Account::from_files("nobody", PASSWD, GROUP).unwrap();
        let result = switch_to(&nobody);
        drop(done);
        other.join().unwrap();
        let err = result.unwrap_err();
        assert!(err.contains("threads"), "{err}");
        assert_ne!(getuid().as_raw(), 65534);
    }
}
