//! Known-answer tests of the session rules: command sequences in, replies and actions out,
//! no sockets, no files, a fake clock.

use super::*;

#[test]
fn pathnames_are_quoted_by_doubling() {
    assert_eq!(quote_path(b"/a\"b"), b"\"/a\"\"b\"");
}

#[test]
fn stat_listings_are_capped_and_say_so() {
    let short = stat_listing(b"a\r\nb\r\n");
    assert_eq!(short, b"Status follows:\n a\n b\nEnd of status");
    let mut body = Vec::new();
    for i in 0..STAT_MAX_ENTRIES + 5 {
        body.extend_from_slice(format!("entry {i}\r\n").as_bytes());
    }
    let capped = stat_listing(&body);
    assert_eq!(
        capped
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b" entry"))
            .count(),
        STAT_MAX_ENTRIES
    );
    let last = format!(
        "End of status: first {STAT_MAX_ENTRIES} of {} entries; LIST shows all",
        STAT_MAX_ENTRIES + 5
    );
    assert!(capped.ends_with(last.as_bytes()));
    // Long lines: the byte cap comes first, and no later (shorter) line slips in.
    let long = vec![b'x'; 4000];
    let mut body = Vec::new();
    for _ in 0..1000 {
        body.extend_from_slice(&long);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"y\r\n");
    let capped = stat_listing(&body);
    assert!(capped.len() <= STAT_MAX_BYTES + 100, "{}", capped.len());
    assert!(!capped.windows(3).any(|w| w == b" y\n"));
    let shown = (STAT_MAX_BYTES - 16) / 4002;
    let last = format!("End of status: first {shown} of 1001 entries; LIST shows all");
    assert!(
        capped.ends_with(last.as_bytes()),
        "{}",
        String::from_utf8_lossy(&capped[capped.len() - 80..])
    );
}

// ---- the harness: a session on a fake clock ----

use std::net::{Ipv4Addr, SocketAddrV4};

use pasv_protocol::ReplyDecoder;

const SECOND: Duration = Duration::from_secs(1);

fn rules() -> Rules {
    Rules {
        banner: "pasvd test".into(),
        login_timeout: 30 * SECOND,
        idle_timeout: 300 * SECOND,
        accept_timeout: 10 * SECOND,
        login_fail_delay: SECOND,
        max_login_fails: 3,
        port_enable: true,
        port_min_port: 1024,
        ascii_transfers: true,
        anonymous_allowed: true,
        tls: false,
        tls_required: TlsRequired::None,
    }
}

struct Session {
    core: Core,
    now: Instant,
    decoder: ReplyDecoder,
    wire: BytesMut,
}

impl Session {
    fn with(rules: Rules) -> Session {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let local = SocketAddr::from(([127, 0, 0, 1], 21));
        let core = Core::new(
            Arc::new(rules),
            Arc::new(Counters::default()),
            1,
            peer,
            local,
            Instant::ZERO,
        );
        Session {
            core,
            now: Instant::ZERO,
            decoder: ReplyDecoder::new(),
            wire: BytesMut::new(),
        }
    }

    fn new() -> Session {
        let mut s = Session::with(rules());
        assert_eq!(s.replies(), ["220 pasvd test"]);
        s
    }

    /// A session logged in as `alice`, with write access unless `write` is false.
    fn logged_in(write: bool) -> Session {
        let mut s = Session::new();
        s.send("USER alice\r\nPASS secret\r\n");
        assert!(matches!(s.actions().as_slice(), [Action::Verify { .. }]));
        s.core.handle_verified(
            s.now,
            Verified::Granted {
                name: "alice".into(),
                write,
                anonymous: false,
                admin: false,
            },
        );
        assert_eq!(s.codes(), [331, 230]);
        s
    }

    fn send(&mut self, text: &str) {
        self.core.input_buffer().extend_from_slice(text.as_bytes());
        self.core.handle_input(self.now);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    /// The replies written so far (each as its last line, `ddd text`); the socket takes
    /// them all.
    fn replies(&mut self) -> Vec<String> {
        let out = self.core.transmit().to_vec();
        self.core.handle_written(self.now, out.len());
        self.wire.extend_from_slice(&out);
        let mut replies = Vec::new();
        while let Some(reply) = self.decoder.decode(&mut self.wire).expect("valid replies") {
            let last = reply.lines().last().expect("one line at least");
            replies.push(format!("{} {}", reply.code(), last.to_string_lossy()));
        }
        replies
    }

    /// The codes of the replies written so far.
    fn codes(&mut self) -> Vec<u16> {
        self.replies()
            .iter()
            .map(|r| r[..3].parse().expect("a code"))
            .collect()
    }

    /// The decoded replies themselves.
    fn full_replies(&mut self) -> Vec<Reply> {
        let out = self.core.transmit().to_vec();
        self.core.handle_written(self.now, out.len());
        self.wire.extend_from_slice(&out);
        let mut replies = Vec::new();
        while let Some(reply) = self.decoder.decode(&mut self.wire).expect("valid replies") {
            replies.push(reply);
        }
        replies
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    /// PASV answered with a listening endpoint.
    fn passive(&mut self) {
        let _ = self.actions();
        self.send("PASV\r\n");
        assert!(matches!(
            self.actions().as_slice(),
            [Action::OpenPassive { extended: false }]
        ));
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 30000));
        self.core.handle_passive(self.now, Passive::Opened(addr));
        assert_eq!(
            self.replies(),
            ["227 Entering Passive Mode (127,0,0,1,117,48)."]
        );
    }

    fn end_transfer(&mut self, ending: Ending, upload_ready: bool) {
        let end = TransferEnd {
            ending,
            bytes: 10,
            duration: Duration::ZERO,
            port: Some(30000),
            closer: Some(Closer::Server),
            upload_ready,
        };
        self.core.handle_transfer(self.now, end);
    }

    /// `RETR name` on a passive endpoint, up to its transfer's start.
    fn retr_started(&mut self, name: &str) {
        self.passive();
        self.send(&format!("RETR {name}\r\n"));
        assert!(matches!(
            self.actions().as_slice(),
            [Action::Fs(FsOp::OpenDownload { .. })]
        ));
        self.core
            .handle_fs(self.now, Ok(FsDone::Opened { len: 10 }));
        assert_eq!(self.codes(), [150]);
        assert!(matches!(
            self.actions().as_slice(),
            [Action::StartTransfer(Job::Download { .. })]
        ));
    }
}

fn not_found() -> FsError {
    FsError::Io(io::ErrorKind::NotFound.into())
}

// ---- login ----

#[test]
fn login_goes_user_pass_verified() {
    let mut s = Session::new();
    s.send("PWD\r\nPASS early\r\nUSER alice\r\n");
    assert_eq!(
        s.replies(),
        [
            "530 Please login with USER and PASS.",
            "503 Login with USER first.",
            "331 Please specify the password.",
        ]
    );
    s.send("PASS secret\r\n");
    let actions = s.actions();
    let [Action::Verify { name, password }] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(name, b"alice");
    assert_eq!(password.expose(), b"secret");
    assert!(
        !format!("{actions:?}").contains("secret"),
        "password redacted"
    );
    assert!(matches!(s.core.state(), State::Authenticating { .. }));
    s.core.handle_verified(
        s.now,
        Verified::Granted {
            name: "alice".into(),
            write: true,
            anonymous: false,
            admin: false,
        },
    );
    assert_eq!(s.replies(), ["230 Login successful."]);
    assert!(matches!(s.core.state(), State::Ready));
    s.send("USER bob\r\nPASS again\r\nPWD\r\n");
    assert_eq!(
        s.replies(),
        [
            "530 Can't change to another user.",
            "230 Already logged in.",
            "257 \"/\" is the current directory",
        ]
    );
}

#[test]
fn a_failed_login_holds_its_reply_and_later_commands_for_the_delay() {
    let mut s = Session::new();
    s.send("USER alice\r\nPASS wrong\r\nNOOP\r\n");
    assert!(matches!(s.actions().as_slice(), [Action::Verify { .. }]));
    let failed = Verified::Failed {
        delay: Some(2 * SECOND),
        banned: false,
    };
    s.core.handle_verified(s.now, failed);
    assert_eq!(s.codes(), [331]);
    assert_eq!(s.core.poll_timeout(), Some(Instant::ZERO + 2 * SECOND));
    s.advance(SECOND);
    assert_eq!(s.codes(), Vec::<u16>::new(), "still held");
    // Bytes that arrive meanwhile wait too.
    s.send("SYST\r\n");
    assert_eq!(s.codes(), Vec::<u16>::new());
    s.advance(SECOND);
    assert_eq!(
        s.replies(),
        ["530 Login incorrect.", "200 NOOP ok.", "215 UNIX Type: L8"]
    );
    assert!(matches!(s.core.state(), State::AwaitingUser));
}

#[test]
fn a_failure_without_an_address_delay_uses_the_configured_one() {
    let mut s = Session::new();
    s.send("USER anonymous\r\nPASS x\r\n");
    let _ = s.actions();
    let failed = Verified::Failed {
        delay: None,
        banned: false,
    };
    s.core.handle_verified(s.now, failed);
    assert_eq!(s.core.poll_timeout(), Some(Instant::ZERO + SECOND));
}

#[test]
fn too_many_failed_logins_close_the_session() {
    let mut s = Session::new();
    for round in 1..=3 {
        s.send("USER alice\r\nPASS wrong\r\n");
        let _ = s.actions();
        let failed = Verified::Failed {
            delay: Some(SECOND),
            banned: false,
        };
        s.core.handle_verified(s.now, failed);
        s.advance(SECOND);
        let expected = if round < 3 { 530 } else { 421 };
        assert_eq!(s.codes(), [331, expected], "round {round}");
    }
    assert!(s.core.is_closed());
    s.send("USER alice\r\n");
    assert_eq!(s.codes(), Vec::<u16>::new(), "nothing read after the close");
}

#[test]
fn a_ban_closes_the_session_after_the_delay_or_at_once() {
    let mut s = Session::new();
    s.send("USER alice\r\nPASS wrong\r\n");
    let _ = s.actions();
    let failed = Verified::Failed {
        delay: Some(SECOND),
        banned: true,
    };
    s.core.handle_verified(s.now, failed);
    s.advance(SECOND);
    assert_eq!(
        s.replies(),
        [
            "331 Please specify the password.",
            "421 Too many failed logins from your address."
        ]
    );
    assert!(s.core.is_closed());

    let mut s = Session::new();
    s.send("USER alice\r\nPASS any\r\n");
    let _ = s.actions();
    s.core.handle_verified(s.now, Verified::Banned);
    assert_eq!(s.codes(), [331, 421]);
    assert!(s.core.is_closed());
}

#[test]
fn anonymous_is_refused_when_not_allowed() {
    let mut s = Session::with(Rules {
        anonymous_allowed: false,
        ..rules()
    });
    let _ = s.replies();
    s.send("USER anonymous\r\nPASS x\r\n");
    assert_eq!(
        s.replies(),
        [
            "530 Anonymous login not allowed.",
            "503 Login with USER first."
        ]
    );
    assert!(s.actions().is_empty());
}

// ---- timeouts ----

#[test]
fn the_login_deadline_holds_whatever_the_client_sends_or_waits_for() {
    let mut s = Session::new();
    assert_eq!(s.core.poll_timeout(), Some(Instant::ZERO + 30 * SECOND));
    s.advance(29 * SECOND);
    s.send("NOOP\r\nUSER alice\r\nPASS slow\r\n");
    let _ = s.actions();
    assert_eq!(s.codes(), [200, 331]);
    // The verification is still running when the deadline passes.
    s.advance(SECOND);
    assert_eq!(s.replies(), ["421 Login timeout."]);
    assert!(s.core.is_closed());
    // A verification that ends afterwards changes nothing.
    s.core.handle_verified(
        s.now,
        Verified::Granted {
            name: "alice".into(),
            write: true,
            anonymous: false,
            admin: false,
        },
    );
    assert_eq!(s.codes(), Vec::<u16>::new());
}

#[test]
fn a_login_clears_the_login_deadline_and_rein_sets_it_again() {
    let mut s = Session::logged_in(true);
    s.advance(31 * SECOND);
    assert_eq!(s.codes(), Vec::<u16>::new());
    s.send("REIN\r\n");
    assert_eq!(s.replies(), ["220 Ready for a new user."]);
    assert_eq!(s.core.poll_timeout(), Some(s.now + 30 * SECOND));
    s.advance(30 * SECOND);
    assert_eq!(s.replies(), ["421 Login timeout."]);
}

#[test]
fn the_idle_timeout_counts_from_the_last_command() {
    let mut s = Session::logged_in(true);
    s.advance(200 * SECOND);
    s.send("NOOP\r\n");
    assert_eq!(s.codes(), [200]);
    assert_eq!(s.core.poll_timeout(), Some(s.now + 300 * SECOND));
    s.advance(299 * SECOND);
    assert_eq!(s.codes(), Vec::<u16>::new());
    s.advance(SECOND);
    assert_eq!(s.replies(), ["421 Timeout."]);
    assert!(s.core.is_closed());
}

#[test]
fn replies_left_unread_for_the_idle_timeout_reset_the_session_whatever_it_sends() {
    let mut s = Session::logged_in(true);
    s.send("NOOP\r\n");
    // The socket takes nothing.
    s.core.handle_written(s.now, 0);
    let stalled = s.now;
    for _ in 0..9 {
        s.advance(30 * SECOND);
        s.send("NOOP\r\n");
        s.core.handle_written(s.now, 0);
    }
    assert!(s.actions().is_empty());
    s.now = stalled + 300 * SECOND;
    s.core.handle_timeout(s.now);
    let actions = s.actions();
    assert!(
        matches!(actions.as_slice(), [Action::Reset { unread }] if *unread == 10 * 14),
        "{actions:?}"
    );
    assert!(s.core.is_closed());
}

#[test]
fn no_idle_timeout_while_a_transfer_runs() {
    let mut s = Session::logged_in(true);
    s.retr_started("big");
    assert_eq!(s.core.poll_timeout(), None);
    s.advance(3600 * SECOND);
    assert!(s.actions().is_empty());
    assert_eq!(s.codes(), Vec::<u16>::new());
    s.end_transfer(Ending::Complete, false);
    assert_eq!(s.codes(), [226]);
    assert_eq!(s.core.poll_timeout(), Some(s.now + 300 * SECOND));
}

#[test]
fn an_idle_passive_endpoint_times_out_and_a_waiting_connection_gets_another_term() {
    let mut s = Session::logged_in(true);
    s.passive();
    assert_eq!(s.core.poll_timeout(), Some(s.now + 10 * SECOND));
    s.advance(10 * SECOND);
    assert!(matches!(s.actions().as_slice(), [Action::AcceptDue]));
    s.core.handle_connection_taken(s.now);
    s.send("STAT\r\n");
    let stat = s.full_replies().remove(0);
    assert!(stat.text().contains("Data: passive, connected"), "{stat}");
    s.advance(10 * SECOND);
    assert!(matches!(s.actions().as_slice(), [Action::ReleaseData]));
    s.send("RETR f\r\n");
    assert_eq!(s.replies(), ["425 Use PORT, PASV or EPSV first."]);
}

// ---- transfers ----

#[test]
fn transfer_commands_need_a_data_connection_first() {
    let mut s = Session::logged_in(true);
    s.send("RETR f\r\nSTOR f\r\nLIST\r\n");
    assert_eq!(s.codes(), [425, 425, 425]);
    assert!(s.actions().is_empty());
}

#[test]
fn rest_applies_to_the_next_transfer_only() {
    let mut s = Session::logged_in(true);
    s.passive();
    s.send("REST 100\r\nRETR f\r\n");
    assert_eq!(s.replies(), ["350 Restart position accepted (100)."]);
    let actions = s.actions();
    assert!(
        matches!(actions.as_slice(), [Action::Fs(FsOp::OpenDownload { path, offset: 100, ascii: true })] if path == b"/f"),
        "{actions:?}"
    );
    s.core.handle_fs(s.now, Ok(FsDone::Opened { len: 900 }));
    assert_eq!(
        s.replies(),
        ["150 Opening ASCII mode data connection for /f (900 bytes)."]
    );
    assert!(matches!(
        s.actions().as_slice(),
        [Action::StartTransfer(Job::Download { ascii: true })]
    ));
    s.end_transfer(Ending::Complete, false);
    assert_eq!(s.replies(), ["226 Transfer complete."]);
    assert!(matches!(s.actions().as_slice(), [Action::Log(f)] if f.complete && !f.incoming));
    // The offset was used up.
    s.passive();
    s.send("TYPE I\r\nRETR f\r\n");
    assert_eq!(s.codes(), [200]);
    assert!(matches!(
        s.actions().as_slice(),
        [Action::Fs(FsOp::OpenDownload {
            offset: 0,
            ascii: false,
            ..
        })]
    ));
    // Past the end: the filesystem says so, and nothing starts.
    s.core.handle_fs(s.now, Err(FsError::PastEnd));
    assert_eq!(
        s.replies(),
        ["554 Restart position beyond the end of the file."]
    );
    assert!(s.actions().is_empty());
}

#[test]
fn rest_then_stor_keeps_the_offset_and_commits_after_a_clean_end() {
    let mut s = Session::logged_in(true);
    s.passive();
    s.send("REST 5\r\nSTOR dir/f\r\n");
    assert_eq!(s.codes(), [350]);
    let actions = s.actions();
    assert!(
        matches!(actions.as_slice(), [Action::Fs(FsOp::CreateUpload { path, keep: 5 })] if path == b"/dir/f"),
        "{actions:?}"
    );
    s.core.handle_fs(s.now, Ok(FsDone::Prepared));
    assert_eq!(s.replies(), ["150 Ok to send data."]);
    assert!(matches!(
        s.actions().as_slice(),
        [Action::StartTransfer(Job::Upload { .. })]
    ));
    s.end_transfer(Ending::Complete, true);
    let actions = s.actions();
    assert!(
        matches!(actions.as_slice(), [Action::Fs(FsOp::Commit { target, unique: false })] if target == b"/dir/f"),
        "{actions:?}"
    );
    assert_eq!(s.codes(), Vec::<u16>::new(), "226 only after the commit");
    s.core.handle_fs(s.now, Ok(FsDone::Committed(None)));
    assert_eq!(s.replies(), ["226 Transfer complete."]);
}

#[test]
fn stou_names_its_file_in_the_final_reply_and_appe_keeps_everything() {
    let mut s = Session::logged_in(true);
    s.passive();
    s.send("STOU\r\n");
    assert!(matches!(
        s.actions().as_slice(),
        [Action::Fs(FsOp::CreateUpload { keep: 0, .. })]
    ));
    s.core.handle_fs(s.now, Ok(FsDone::Prepared));
    let _ = s.actions();
    s.end_transfer(Ending::Complete, true);
    assert!(matches!(
        s.actions().as_slice(),
        [Action::Fs(FsOp::Commit { unique: true, .. })]
    ));
    s.core.handle_fs(
        s.now,
        Ok(FsDone::Committed(Some(b"/pasvd.stou.1".to_vec()))),
    );
    assert_eq!(
        s.replies(),
        [
            "150 FILE: unique name given in the final reply.",
            "226 Transfer complete. FILE: /pasvd.stou.1"
        ]
    );
    s.passive();
    s.send("APPE log\r\n");
    assert!(matches!(
        s.actions().as_slice(),
        [Action::Fs(FsOp::CreateUpload { keep: u64::MAX, .. })]
    ));
}

#[test]
fn a_failed_commit_is_a_local_error() {
    let mut s = Session::logged_in(true);
    s.passive();
    s.send("STOR gone/f\r\n");
    let _ = s.actions();
    s.core.handle_fs(s.now, Ok(FsDone::Prepared));
    let _ = s.actions();
    s.end_transfer(Ending::Complete, true);
    let _ = s.actions();
    s.core.handle_fs(s.now, Err(not_found()));
    assert_eq!(
        s.replies(),
        [
            "150 Ok to send data.",
            "451 Local error: No such file or directory."
        ]
    );
}

#[test]
fn a_read_only_account_cannot_write() {
    let mut s = Session::logged_in(false);
    s.passive();
    s.send("STOR f\r\nDELE f\r\nMKD d\r\nRNFR f\r\nSITE CHMOD 644 f\r\nMFMT 20200101000000 f\r\n");
    assert_eq!(s.codes(), [550, 550, 550, 550, 550, 550]);
    assert!(s.actions().is_empty());
}

#[test]
fn an_upload_whose_client_vanished_is_not_committed() {
    let mut s = Session::logged_in(true);
    s.passive();
    s.send("STOR f\r\n");
    let _ = s.actions();
    s.core.handle_fs(s.now, Ok(FsDone::Prepared));
    let _ = s.actions();
    assert_eq!(s.codes(), [150]);
    // The control connection closes while the data connection ends cleanly.
    s.core.handle_eof(s.now);
    assert!(matches!(s.actions().as_slice(), [Action::AbortTransfer]));
    assert!(!s.core.wants_input());
    s.end_transfer(Ending::Complete, true);
    assert!(matches!(
        s.actions().as_slice(),
        [Action::DiscardUpload, Action::Log(f)] if !f.complete
    ));
    assert_eq!(
        s.replies(),
        [
            "426 Connection closed; transfer aborted.",
            "421 Control connection closed."
        ]
    );
    assert!(s.core.is_closed());
}

#[test]
fn abor_during_a_transfer_gives_426_then_226() {
    let mut s = Session::logged_in(true);
    s.retr_started("f");
    s.send("ABOR\r\n");
    assert!(matches!(s.actions().as_slice(), [Action::AbortTransfer]));
    assert_eq!(s.codes(), Vec::<u16>::new());
    s.end_transfer(Ending::Aborted, false);
    assert_eq!(
        s.replies(),
        [
            "426 Connection closed; transfer aborted.",
            "226 ABOR successful."
        ]
    );
    // Without a transfer ABOR only closes the endpoint.
    s.passive();
    s.send("ABOR\r\n");
    assert!(matches!(s.actions().as_slice(), [Action::ReleaseData]));
    assert_eq!(s.replies(), ["226 No transfer to abort."]);
}

#[test]
fn quit_during_a_transfer_waits_for_it_and_for_commands_sent_before() {
    let mut s = Session::logged_in(true);
    s.retr_started("f");
    s.core.handle_progress(1234);
    s.send("PWD\r\nSTAT\r\nNOOP\r\nQUIT\r\nSYST\r\n");
    // STAT and NOOP cannot wait; PWD, QUIT and what follows do.
    assert_eq!(
        s.replies(),
        ["213 Status: RETR 1234 bytes transferred", "200 NOOP ok."]
    );
    assert!(!s.core.is_closed());
    s.end_transfer(Ending::Complete, false);
    assert_eq!(
        s.replies(),
        [
            "226 Transfer complete.",
            "257 \"/\" is the current directory",
            "221 Goodbye."
        ]
    );
    assert!(s.core.is_closed());
}

#[test]
fn shutdown_during_a_transfer_ends_the_session_after_it() {
    let mut s = Session::logged_in(true);
    s.retr_started("f");
    s.core.handle_shutdown(s.now);
    assert_eq!(s.codes(), Vec::<u16>::new());
    s.end_transfer(Ending::Complete, false);
    assert_eq!(
        s.replies(),
        ["226 Transfer complete.", "421 Server shutting down."]
    );
    assert!(s.core.is_closed());
}

#[test]
fn commands_during_a_transfer_queue_up_to_a_bound() {
    let mut s = Session::logged_in(true);
    s.retr_started("f");
    let many = "SYST\r\n".repeat(MAX_QUEUED + 4);
    s.send(&many);
    assert_eq!(s.codes(), Vec::<u16>::new());
    // The rest waits undecoded in the input.
    assert_eq!(s.core.input_buffer().len(), 4 * 6);
    s.end_transfer(Ending::Complete, false);
    let codes = s.codes();
    assert_eq!(codes.len(), 1 + MAX_QUEUED + 4);
    assert!(codes[1..].iter().all(|&c| c == 215));
}

#[test]
fn a_vanished_data_connection_is_a_426_and_no_connection_a_425() {
    let mut s = Session::logged_in(true);
    s.retr_started("f");
    s.end_transfer(
        Ending::Network(io::ErrorKind::ConnectionReset.into()),
        false,
    );
    let replies = s.replies();
    assert!(
        replies[0].starts_with("426 Connection closed; transfer aborted: "),
        "{replies:?}"
    );
    s.retr_started("f");
    s.end_transfer(Ending::NoConnection("accept timed out".into()), false);
    assert_eq!(
        s.replies(),
        ["425 Can't open data connection: accept timed out."]
    );
    // A TLS stream cut without close_notify (rustls' text points to its manual): plain words.
    s.retr_started("f");
    let cut = io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify: \
         https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
    );
    s.end_transfer(Ending::Network(cut), false);
    assert_eq!(
        s.replies(),
        [
            "426 Connection closed; transfer aborted: the connection ended without TLS \
          close_notify (the data may be cut short)."
        ]
    );
    s.retr_started("f");
    let other = io::Error::other("bad record: https://example.invalid/manual");
    s.end_transfer(Ending::Network(other), false);
    assert_eq!(
        s.replies(),
        ["426 Connection closed; transfer aborted: bad record."]
    );
}

// ---- pipelining and output ----

#[test]
fn pipelined_commands_are_answered_in_order_across_waits() {
    let mut s = Session::new();
    s.send("USER alice\r\nPASS secret\r\nCWD sub\r\nPWD\r\nSIZE f\r\nTYPE I\r\n");
    assert_eq!(s.codes(), [331]);
    let _ = s.actions();
    s.core.handle_verified(
        s.now,
        Verified::Granted {
            name: "alice".into(),
            write: true,
            anonymous: false,
            admin: false,
        },
    );
    let actions = s.actions();
    assert!(matches!(actions.as_slice(), [Action::Fs(FsOp::IsDir(p))] if p == b"/sub"));
    assert!(!s.core.wants_input(), "nothing read while waiting");
    s.core.handle_fs(s.now, Ok(FsDone::Done));
    assert!(matches!(s.actions().as_slice(), [Action::Fs(FsOp::Stat(p))] if p == b"/sub/f"));
    let meta = Meta {
        kind: Kind::File,
        mode: 0o644,
        size: 42,
        mtime: 0,
        nlink: 1,
    };
    s.core.handle_fs(s.now, Ok(FsDone::Meta(meta)));
    assert_eq!(
        s.replies(),
        [
            "230 Login successful.",
            "250 Directory successfully changed.",
            "257 \"/sub\" is the current directory",
            "213 42",
            "200 Switching to Binary mode.",
        ]
    );
}

#[test]
fn nothing_is_decoded_while_replies_wait_beyond_the_bound() {
    let mut s = Session::logged_in(true);
    // FEAT replies are long; the client reads none of them.
    let feat = "FEAT\r\n".repeat(2000);
    s.send(&feat);
    let waiting = s.core.transmit().len();
    assert!(waiting > MAX_PENDING_OUTPUT);
    assert!(
        waiting < MAX_PENDING_OUTPUT + 1024,
        "one reply past the bound"
    );
    assert!(!s.core.wants_input());
    assert!(!s.core.input_buffer().is_empty(), "commands left undecoded");
    // The client reads: decoding goes on.
    let before = s.core.input_buffer().len();
    s.core.handle_written(s.now, waiting);
    assert!(s.core.input_buffer().len() < before);
}

#[test]
fn decode_errors_are_answered_and_the_session_goes_on() {
    let mut s = Session::logged_in(true);
    s.send("RETR\r\nNOOP\r\n");
    assert_eq!(s.codes(), [501, 200]);
}

// ---- RNFR / RNTO ----

#[test]
fn rnto_needs_a_successful_rnfr_just_before() {
    let mut s = Session::logged_in(true);
    s.send("RNTO b\r\nRNFR missing\r\n");
    assert_eq!(s.codes(), [503]);
    assert!(matches!(s.actions().as_slice(), [Action::Fs(FsOp::Exists(p))] if p == b"/missing"));
    s.core.handle_fs(s.now, Err(not_found()));
    s.send("RNTO b\r\nRNFR a\r\n");
    assert_eq!(
        s.replies(),
        ["550 No such file or directory.", "503 RNFR required first."]
    );
    let _ = s.actions();
    s.core.handle_fs(s.now, Ok(FsDone::Done));
    s.send("RNTO /x/b\r\n");
    assert_eq!(s.replies(), ["350 Ready for RNTO."]);
    let actions = s.actions();
    assert!(
        matches!(actions.as_slice(), [Action::Fs(FsOp::Rename { from, to })] if from == b"/a" && to == b"/x/b"),
        "{actions:?}"
    );
    s.core.handle_fs(s.now, Ok(FsDone::Done));
    s.send("RNTO c\r\n");
    assert_eq!(
        s.replies(),
        ["250 Rename successful.", "503 RNFR required first."]
    );
}

// ---- passive, active, EPSV ALL, the 425 path ----

#[test]
fn epsv_all_refuses_every_other_data_command() {
    let mut s = Session::logged_in(true);
    s.send("EPSV ALL\r\nPASV\r\nPORT 127,0,0,1,200,0\r\nEPRT |1|127.0.0.1|51200|\r\nEPSV\r\n");
    assert_eq!(s.codes(), [200, 503, 503, 503]);
    assert!(matches!(
        s.actions().as_slice(),
        [Action::OpenPassive { extended: true }]
    ));
    s.core.handle_passive(
        s.now,
        Passive::Opened(SocketAddr::from(([127, 0, 0, 1], 30001))),
    );
    assert_eq!(
        s.replies(),
        ["229 Entering Extended Passive Mode (|||30001|)"]
    );
    // REIN forgets it.
    s.send("REIN\r\n");
    let _ = s.actions();
    assert!(!s.core.epsv_all);
}

#[test]
fn port_is_checked_before_anything_connects() {
    let mut s = Session::logged_in(true);
    s.send("PORT 10,0,0,1,200,0\r\nPORT 127,0,0,1,0,80\r\nPORT 127,0,0,1,200,0\r\n");
    assert_eq!(
        s.replies(),
        [
            "501 Data address must be the client's own address.",
            "501 Data port too low.",
            "200 PORT command successful. Consider using PASV."
        ]
    );
    let actions = s.actions();
    assert!(
        matches!(actions.as_slice(), [Action::UseActive(a)] if a.port() == 51200),
        "{actions:?}"
    );
    let mut s = Session::with(Rules {
        port_enable: false,
        ..rules()
    });
    s.send("USER anonymous\r\nPASS x\r\n");
    let _ = s.actions();
    s.core.handle_verified(
        s.now,
        Verified::Granted {
            name: "anonymous".into(),
            write: false,
            anonymous: true,
            admin: false,
        },
    );
    s.send("PORT 127,0,0,1,200,0\r\n");
    assert_eq!(
        s.replies().last().map(String::as_str),
        Some("502 PORT and EPRT are disabled; use PASV or EPSV.")
    );
}

#[test]
fn a_new_pasv_releases_the_previous_endpoint() {
    let mut s = Session::logged_in(true);
    s.passive();
    s.send("PASV\r\n");
    assert!(matches!(
        s.actions().as_slice(),
        [Action::ReleaseData, Action::OpenPassive { extended: false }]
    ));
}

/// Every refusal of PASV/EPSV: a 425 for a shortage of ports carries a retry hint; the
/// one for an address at its lease cap says no time is known; no address of the family
/// is permanent (502 for PASV, 522 for EPSV).
#[test]
fn the_425_path() {
    let refusals = [
        (
            PassiveRefusal::Exhausted {
                retry_after: 37 * SECOND,
            },
            425,
            Some(37 * SECOND),
        ),
        (
            PassiveRefusal::AllLeased { hint: 3 * SECOND },
            425,
            Some(3 * SECOND),
        ),
        (PassiveRefusal::Bind("in use".into()), 425, Some(SECOND)),
        (PassiveRefusal::PeerLimit { limit: 4 }, 425, None),
        (PassiveRefusal::NoAddress, 502, None),
    ];
    for (refusal, code, hint) in refusals {
        let mut s = Session::logged_in(true);
        s.send("PASV\r\n");
        let _ = s.actions();
        let what = format!("{refusal:?}");
        s.core.handle_passive(s.now, Passive::Refused(refusal));
        let replies = s.full_replies();
        assert_eq!(replies.len(), 1, "{what}");
        assert_eq!(replies[0].code().get(), code, "{what}");
        assert_eq!(replies[0].retry_after(), hint, "{what}: {}", replies[0]);
        if code == 425 && hint.is_none() {
            assert!(
                replies[0].text().contains("no time known"),
                "{}",
                replies[0]
            );
        }
        assert!(matches!(s.core.state(), State::Ready));
        s.send("RETR f\r\n");
        assert_eq!(s.codes(), [425], "no endpoint after a refusal");
    }
    let mut s = Session::logged_in(true);
    s.send("EPSV\r\n");
    let _ = s.actions();
    s.core
        .handle_passive(s.now, Passive::Refused(PassiveRefusal::NoAddress));
    assert_eq!(s.codes(), [522]);
    s.send("PASV\r\n");
    let _ = s.actions();
    s.core.handle_passive(s.now, Passive::NoIpv4);
    assert_eq!(
        s.replies(),
        ["502 PASV needs an IPv4 passive address and there is none; use EPSV."]
    );
}

// ---- end of input ----

#[test]
fn end_of_input_while_idle_closes_after_the_waiting_replies() {
    let mut s = Session::logged_in(true);
    s.send("NOOP\r\n");
    s.core.handle_eof(s.now);
    assert!(s.core.is_closed());
    assert_eq!(s.replies(), ["200 NOOP ok."], "no reply is added");
}

#[test]
fn end_of_input_while_waiting_closes_once_the_wait_is_over() {
    let mut s = Session::logged_in(true);
    s.send("CWD d\r\nPWD\r\n");
    let _ = s.actions();
    s.core.handle_eof(s.now);
    assert!(!s.core.is_closed());
    s.core.handle_fs(s.now, Ok(FsDone::Done));
    assert_eq!(s.replies(), ["250 Directory successfully changed."]);
    assert!(s.core.is_closed());
}

// ---- replies ----

#[test]
fn filesystem_errors_become_replies_in_one_place() {
    let mut s = Session::logged_in(true);
    s.send("CWD ../../etc\r\n");
    assert!(matches!(s.actions().as_slice(), [Action::Fs(FsOp::IsDir(p))] if p == b"/etc"));
    s.core.handle_fs(s.now, Err(FsError::Denied));
    s.send("SIZE .pasvd-upload-x\r\nMLSD f\r\n");
    assert!(matches!(
        s.actions().as_slice(),
        [Action::Fs(FsOp::Stat(_))]
    ));
    let meta = Meta {
        kind: Kind::File,
        mode: 0o644,
        size: 1,
        mtime: 0,
        nlink: 1,
    };
    s.core.handle_fs(s.now, Ok(FsDone::Meta(meta)));
    assert_eq!(
        s.replies(),
        [
            "550 Permission denied.",
            "550 Permission denied.",
            "501 MLSD needs a directory."
        ]
    );
}

#[test]
fn site_pool_is_for_administrators() {
    let mut s = Session::logged_in(true);
    s.send("SITE POOL\r\nSITE HELP\r\n");
    assert_eq!(s.codes(), [550, 214]);
    assert!(s.actions().is_empty());
    let mut s = Session::new();
    s.send("USER root\r\nPASS x\r\nSITE POOL\r\nNOOP\r\n");
    let _ = s.actions();
    s.core.handle_verified(
        s.now,
        Verified::Granted {
            name: "root".into(),
            write: true,
            anonymous: false,
            admin: true,
        },
    );
    assert!(matches!(s.actions().as_slice(), [Action::PoolReport]));
    s.core.handle_pool_report(s.now, "Pool: 3 free\nEnd");
    assert_eq!(
        s.replies(),
        [
            "331 Please specify the password.",
            "230 Login successful.",
            "200 End",
            "200 NOOP ok."
        ]
    );
}

#[test]
fn shutdown_while_idle_closes_at_once_and_while_waiting_after_the_wait() {
    let mut s = Session::logged_in(true);
    s.core.handle_shutdown(s.now);
    assert_eq!(s.replies(), ["421 Server shutting down."]);
    assert!(s.core.is_closed());
    let mut s = Session::logged_in(true);
    s.send("MKD d\r\n");
    let _ = s.actions();
    s.core.handle_shutdown(s.now);
    assert!(!s.core.is_closed());
    s.core.handle_fs(s.now, Ok(FsDone::Done));
    assert_eq!(
        s.replies(),
        ["257 \"/d\" created", "421 Server shutting down."]
    );
}

/// Architecture Invariant: the core does no IO and reads no clock (docs/ARCHITECTURE.md).
#[test]
fn the_core_names_no_io() {
    let source = include_str!("../core.rs");
    for forbidden in [
        "tokio",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "std::fs",
        "std::thread",
        "clock::",
        "spawn(",
        "Instant::now",
        "SystemTime",
    ] {
        assert!(!source.contains(forbidden), "core.rs mentions {forbidden}");
    }
}

// ---- FTPS (RFC 4217) ----

fn tls_rules(required: TlsRequired) -> Rules {
    Rules {
        tls: true,
        tls_required: required,
        ..rules()
    }
}

impl Session {
    /// A session with TLS configured, its control connection secured by AUTH TLS.
    fn secured(required: TlsRequired) -> Session {
        let mut s = Session::with(tls_rules(required));
        let _ = s.replies();
        s.send("AUTH TLS\r\n");
        assert_eq!(s.replies(), ["234 Proceed with TLS negotiation."]);
        assert!(matches!(s.actions().as_slice(), [Action::SecureControl]));
        s.core.handle_secured(s.now, true);
        assert!(s.core.control_protected());
        s
    }

    /// Logs in as alice (after whatever the session did before).
    fn login(&mut self) {
        self.send("USER alice\r\nPASS secret\r\n");
        assert!(matches!(self.actions().as_slice(), [Action::Verify { .. }]));
        self.core.handle_verified(
            self.now,
            Verified::Granted {
                name: "alice".into(),
                write: true,
                anonymous: false,
                admin: false,
            },
        );
        assert_eq!(self.codes(), [331, 230]);
    }

    /// FEAT's lines.
    fn feat(&mut self) -> Vec<String> {
        self.send("FEAT\r\n");
        let replies = self.full_replies();
        assert_eq!(replies.len(), 1);
        replies[0]
            .lines()
            .iter()
            .map(|l| l.to_string_lossy().trim().to_owned())
            .collect()
    }
}

fn has_line(lines: &[String], line: &str) -> bool {
    lines.iter().any(|l| l == line)
}

#[test]
fn feat_lists_auth_pbsz_prot_only_when_tls_is_configured() {
    let mut plain = Session::new();
    let feat = plain.feat();
    assert!(has_line(&feat, "EPSV"), "{feat:?}");
    for line in ["AUTH TLS", "AUTH SSL", "PBSZ", "PROT"] {
        assert!(!has_line(&feat, line), "{line} without TLS");
    }
    let mut tls = Session::with(tls_rules(TlsRequired::None));
    let _ = tls.replies();
    let feat = tls.feat();
    for line in ["AUTH TLS", "AUTH SSL", "PBSZ", "PROT", "EPSV", "UTF8"] {
        assert!(has_line(&feat, line), "{line}: {feat:?}");
    }
}

#[test]
fn auth_without_tls_configured_is_refused_and_nothing_changes() {
    let mut s = Session::new();
    s.send("AUTH TLS\r\nPBSZ 0\r\nPROT P\r\nCCC\r\n");
    assert_eq!(
        s.replies(),
        [
            "504 AUTH not supported: TLS is not configured on this server.",
            "503 PBSZ needs AUTH TLS first.",
            "503 PROT needs AUTH TLS first.",
            "533 Control connection is not protected.",
        ]
    );
    assert!(s.actions().is_empty());
    assert!(!s.core.data_protected());
}

#[test]
fn auth_tls_drops_commands_pipelined_behind_it() {
    // The STARTTLS command injection: commands sent in plaintext right behind AUTH must not
    // run as if they had come through TLS.
    let mut s = Session::with(tls_rules(TlsRequired::None));
    let _ = s.replies();
    s.send("AUTH TLS\r\nUSER mallory\r\nPASS x\r\nDELE f\r\n");
    assert_eq!(s.replies(), ["234 Proceed with TLS negotiation."]);
    assert!(matches!(s.actions().as_slice(), [Action::SecureControl]));
    assert!(matches!(s.core.state(), State::Securing));
    assert!(
        !s.core.wants_input(),
        "nothing is read during the handshake"
    );
    // More plaintext arrives before the handshake (the driver would not read it; the core
    // drops it anyway).
    s.send("USER mallory2\r\n");
    assert!(s.replies().is_empty());
    s.core.handle_secured(s.now, true);
    assert!(s.replies().is_empty(), "no pipelined command ran");
    assert!(s.actions().is_empty());
    assert!(matches!(s.core.state(), State::AwaitingUser));
    s.send("USER alice\r\n");
    assert_eq!(s.replies(), ["331 Please specify the password."]);
}

#[test]
fn auth_variants_and_sequence() {
    for mechanism in ["TLS", "tls", "SSL", "TLS-C"] {
        let mut s = Session::with(tls_rules(TlsRequired::None));
        let _ = s.replies();
        s.send(&format!("AUTH {mechanism}\r\n"));
        assert_eq!(s.codes(), [234], "{mechanism}");
        assert!(matches!(s.actions().as_slice(), [Action::SecureControl]));
    }
    let mut s = Session::with(tls_rules(TlsRequired::None));
    let _ = s.replies();
    s.send("AUTH KERBEROS_V4\r\nUSER alice\r\nAUTH TLS\r\n");
    assert_eq!(
        s.replies(),
        [
            "504 AUTH mechanism not supported (TLS or SSL).",
            "331 Please specify the password.",
            "503 AUTH must come before USER.",
        ]
    );
    assert!(s.actions().is_empty());
    let mut s = Session::secured(TlsRequired::None);
    s.send("AUTH TLS\r\n");
    assert_eq!(s.replies(), ["503 Already using TLS."]);
    assert!(s.actions().is_empty());
}

#[test]
fn a_failed_control_handshake_ends_the_session_silently() {
    let mut s = Session::with(tls_rules(TlsRequired::None));
    let _ = s.replies();
    s.send("AUTH TLS\r\n");
    let _ = s.replies();
    let _ = s.actions();
    s.core.handle_secured(s.now, false);
    assert!(s.core.is_closed());
    assert!(s.replies().is_empty(), "nothing in plaintext after a 234");
}

#[test]
fn pbsz_and_prot_after_auth() {
    let mut s = Session::secured(TlsRequired::None);
    s.send("PROT P\r\nPBSZ x\r\nPBSZ 0\r\nPROT S\r\nPROT E\r\nPROT Q\r\n");
    assert_eq!(
        s.replies(),
        [
            "503 PROT needs PBSZ first.",
            "501 PBSZ needs a number (0).",
            "200 PBSZ=0",
            "536 Protection level not supported (P or C).",
            "536 Protection level not supported (P or C).",
            "504 Unknown protection level (P or C).",
        ]
    );
    assert!(!s.core.data_protected());
    s.send("PROT P\r\n");
    assert_eq!(s.replies(), ["200 Protection level set to Private."]);
    assert!(s.core.data_protected());
    s.send("PROT C\r\n");
    assert_eq!(s.replies(), ["200 Protection level set to Clear."]);
    assert!(!s.core.data_protected());
    s.send("PBSZ 16384\r\n");
    assert_eq!(s.replies(), ["200 PBSZ=0"], "any size is answered with 0");
}

#[test]
fn ccc_is_refused_on_a_protected_control_connection() {
    let mut s = Session::secured(TlsRequired::None);
    s.send("CCC\r\n");
    assert_eq!(
        s.replies(),
        ["534 CCC refused: the control connection stays protected."]
    );
    assert!(s.core.control_protected());
}

#[test]
fn tls_required_login_refuses_user_and_pass_before_auth() {
    for required in [TlsRequired::Login, TlsRequired::All] {
        let mut s = Session::with(tls_rules(required));
        let _ = s.replies();
        s.send("USER alice\r\nPASS secret\r\n");
        assert_eq!(
            s.replies(),
            [
                "530 TLS required: send AUTH TLS before USER and PASS.",
                "530 TLS required: send AUTH TLS before USER and PASS.",
            ],
            "{required}"
        );
        assert!(s.actions().is_empty(), "no verification ran");
        let mut s = Session::secured(required);
        s.login();
    }
    // Data only: logins in plaintext are fine.
    let mut s = Session::with(tls_rules(TlsRequired::Data));
    let _ = s.replies();
    s.login();
}

#[test]
fn tls_required_data_refuses_transfers_without_prot_p() {
    for required in [TlsRequired::Data, TlsRequired::All] {
        let mut s = Session::secured(required);
        s.login();
        s.passive();
        s.send("RETR f\r\nLIST\r\nNLST\r\nMLSD\r\nSTOR f\r\nAPPE f\r\nSTOU\r\n");
        let replies = s.replies();
        assert_eq!(replies.len(), 7, "{replies:?}");
        for reply in &replies {
            assert!(
                reply.starts_with("521 Data connection cannot be opened with this PROT setting"),
                "{required}: {reply}"
            );
        }
        assert!(s.actions().is_empty(), "nothing started");
        s.send("PBSZ 0\r\nPROT C\r\n");
        assert_eq!(
            s.replies(),
            [
                "200 PBSZ=0",
                "534 PROT C refused: data connections must be protected."
            ]
        );
        s.send("PROT P\r\nRETR f\r\n");
        assert_eq!(s.codes(), [200]);
        assert!(matches!(
            s.actions().as_slice(),
            [Action::Fs(FsOp::OpenDownload { .. })]
        ));
    }
    // Login only: plaintext data is fine once logged in over TLS.
    let mut s = Session::secured(TlsRequired::Login);
    s.login();
    s.retr_started("f");
    assert!(!s.core.data_protected());
}

#[test]
fn implicit_tls_starts_protected() {
    let mut s = Session::with(tls_rules(TlsRequired::All));
    s.core.set_implicit_tls();
    assert_eq!(s.replies(), ["220 pasvd test"]);
    assert!(s.core.data_protected());
    s.send("AUTH TLS\r\n");
    assert_eq!(s.replies(), ["503 Already using TLS."]);
    s.login();
    s.retr_started("f");
}

#[test]
fn commands_queued_behind_rein_and_auth_tls_during_a_transfer_are_dropped() {
    // The STARTTLS injection through the transfer queue: REIN, AUTH TLS and more commands,
    // all in plaintext while a transfer runs, wait in the queue; AUTH must drop those behind
    // it as it drops the undecoded input.
    let mut s = Session::with(tls_rules(TlsRequired::None));
    let _ = s.replies();
    s.login();
    s.retr_started("f");
    s.send("REIN\r\nAUTH TLS\r\nUSER mallory\r\nPASS x\r\nMKD injected\r\n");
    assert_eq!(s.codes(), Vec::<u16>::new(), "queued behind the transfer");
    s.end_transfer(Ending::Complete, false);
    assert_eq!(
        s.replies(),
        [
            "226 Transfer complete.",
            "220 Ready for a new user.",
            "234 Proceed with TLS negotiation.",
        ]
    );
    let actions = s.actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::SecureControl)),
        "{actions:?}"
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Verify { .. } | Action::Fs(_))),
        "{actions:?}"
    );
    assert!(matches!(s.core.state(), State::Securing));
    s.core.handle_secured(s.now, true);
    assert!(s.replies().is_empty(), "no queued command ran over TLS");
    assert!(s.actions().is_empty());
    assert!(matches!(s.core.state(), State::AwaitingUser));
    s.send("USER alice\r\n");
    assert_eq!(s.replies(), ["331 Please specify the password."]);
}
