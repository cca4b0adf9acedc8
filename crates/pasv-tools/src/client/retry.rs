//! Retry with backoff for transient failures.

use std::time::Duration;

use rand::Rng;

use super::ClientError;
use crate::clock;

/// How the client retries a 421 greeting, a 425 or a 426.
///
/// The delay before attempt n+1 is the server's hint ([`pasv_protocol::Reply::retry_after`])
/// when its reply carries one, plus up to 10% so that sessions refused together do not come
/// back together; otherwise an exponential backoff from `initial_backoff`, doubled per
/// attempt up to `max_backoff`, drawn uniformly from its upper half ("equal jitter"). No
/// attempt starts once the total time since the first would exceed `budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// The first backoff when the server gives no hint.
    pub initial_backoff: Duration,
    /// The largest backoff when the server gives no hint.
    pub max_backoff: Duration,
    /// Time from the first attempt after which no new attempt starts.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The backoff before the attempt after `failed` failures (1-based), without jitter.
    pub fn backoff(&self, failed: u32) -> Duration {
        let shift = failed.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1 << shift)
            .min(self.max_backoff)
    }
}

/// The state of one retried operation: one attempt count and one budget for everything the
/// operation retries (a 421 at login, a 425 or 426 while setting up a transfer, a transfer
/// cut short and resumed), so that nested retries never multiply.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    started: tokio::time::Instant,
    failed: u32,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Backoff {
        Backoff {
            policy,
            started: clock::now(),
            failed: 0,
        }
    }

    /// Called with the error of a failed attempt: sleeps and returns `Ok` when another attempt
    /// should be made, or returns the error to give up with. Retries 421, 425 and 426.
    pub(crate) async fn retry(&mut self, error: ClientError) -> Result<(), ClientError> {
        self.retry_if(error, false).await
    }

    /// [`Backoff::retry`], also retrying network errors when `network` is set (a transfer
    /// cut short resumes while the control connection lives).
    pub(crate) async fn retry_if(
        &mut self,
        error: ClientError,
        network: bool,
    ) -> Result<(), ClientError> {
        if !error.can_retry(network) || self.policy.max_attempts <= 1 {
            return Err(error);
        }
        self.failed += 1;
        let exhausted = |failed, error| ClientError::RetriesExhausted {
            attempts: failed,
            last: Box::new(error),
        };
        if self.failed >= self.policy.max_attempts {
            return Err(exhausted(self.failed, error));
        }
        let elapsed = clock::now().saturating_duration_since(self.started);
        let left = self.policy.budget.saturating_sub(elapsed);
        // The hint comes from the server: no arithmetic on it may overflow (a hostile
        // `retry after 1e30s` simply exceeds the budget).
        let scaled = |d: Duration, factor: f64| {
            Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
        };
        let delay = match error.retry_after() {
            Some(hint) if hint > left => {
                return Err(ClientError::HintBeyondBudget {
                    attempts: self.failed,
                    hint,
                    left,
                    last: Box::new(error),
                });
            }
            // Up to 10% more, so that sessions refused together do not come back together,
            // but never past the budget.
            Some(hint) => hint
                .saturating_add(scaled(hint, rand::thread_rng().gen_range(0.0..0.1)))
                .min(left),
            None => scaled(
                self.policy.backoff(self.failed),
                rand::thread_rng().gen_range(0.5..=1.0),
            ),
        };
        if delay > left {
            return Err(exhausted(self.failed, error));
        }
        tracing::debug!(?delay, attempt = self.failed, %error, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(40), Duration::from_secs(5));
    }

    fn refusal(text: &str) -> ClientError {
        let code = pasv_protocol::ReplyCode::CANT_OPEN_DATA;
        ClientError::from_reply("PASV", pasv_protocol::Reply::new(code, text))
    }

    #[tokio::test(start_paused = true)]
    async fn hints_beyond_the_budget_give_up_at_once() {
        let mut backoff = Backoff::new(RetryPolicy::default());
        let started = clock::now();
        let err = backoff
            .retry(refusal("Try later (retry after 31s)"))
            .await
            .unwrap_err();
        assert!(err.is_exhausted(), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(31)));
        assert_eq!(clock::now(), started);
        // Absurd hints either exceed the budget or do not parse (then the backoff applies);
        // neither may overflow.
        for text in [
            "Try later (retry after 18446744073709551615s)",
            "Try later (retry after 99999999999999999999999999.5s)",
        ] {
            let mut backoff = Backoff::new(RetryPolicy::default());
            let started = clock::now();
            match backoff.retry(refusal(text)).await {
                Err(err) => assert!(err.is_exhausted(), "{text}: {err}"),
                Ok(()) => assert!(clock::now() - started <= Duration::from_secs(5), "{text}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_is_waited_for_with_at_most_ten_percent_more() {
        let mut backoff = Backoff::new(RetryPolicy::default());
        let started = clock::now();
        backoff
            .retry(refusal("Try later (retry after 2s)"))
            .await
            .unwrap();
        let waited = clock::now() - started;
        assert!(waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2200));
        // Not retryable: returned as it is, without waiting.
        let code = pasv_protocol::ReplyCode::FILE_UNAVAILABLE;
        let permanent = ClientError::from_reply("RETR", pasv_protocol::Reply::new(code, "no"));
        let err = backoff.retry(permanent).await.unwrap_err();
        assert!(err.is_permanent() && !err.is_exhausted());
    }

    #[tokio::test(start_paused = true)]
    async fn one_budget_and_one_count_for_the_whole_operation() {
        let policy = RetryPolicy {
            max_attempts: 5,
            budget: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let cut = |text: &str| {
            let code = pasv_protocol::ReplyCode::new(426).unwrap();
            ClientError::from_reply("RETR", pasv_protocol::Reply::new(code, text))
        };
        // A 20 s hint with 5 s of budget: given up at once, saying why.
        let mut backoff = Backoff::new(policy);
        let started = clock::now();
        let err = backoff
            .retry_if(cut("aborted (retry after 20s)"), true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::HintBeyondBudget { hint, .. } if hint == Duration::from_secs(20)),
            "{err}"
        );
        assert!(err.to_string().contains("beyond"), "{err}");
        assert_eq!(clock::now(), started);
        // An error that ended retries is never retried again by an outer loop.
        assert!(backoff
            .retry_if(err, true)
            .await
            .unwrap_err()
            .is_exhausted());
        assert_eq!(clock::now(), started);

        // Network errors are retried only when asked, and count like replies: five attempts
        // in all, the fifth failure ends it.
        let mut backoff = Backoff::new(policy);
        let reset = || ClientError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(!backoff.retry(reset()).await.unwrap_err().is_exhausted());
        for _ in 0..2 {
            backoff.retry_if(reset(), true).await.unwrap();
            backoff
                .retry(cut("aborted (retry after 0.1s)"))
                .await
                .unwrap();
        }
        let err = backoff.retry_if(reset(), true).await.unwrap_err();
        assert!(
            matches!(err, ClientError::RetriesExhausted { attempts: 5, .. }),
            "{err}"
        );
        assert!(err.is_network());
    }
}
