//! The one poll-with-deadline of the lab and the tests, for conditions that have no event to
//! await (a process's log, the kernel's neighbour table, an API object written by another
//! process): poll, and between polls sleep `every`, until a value comes or `timeout` passes.
//! [`try_wait_until`] and [`wait_until_async`] let a poll fail, which ends the wait at once.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    try_wait_until(what, timeout, every, || Ok(f()))
}

/// Same as [`wait_until`], for a poll that can fail: its first error is returned at once.
pub fn try_wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// [`try_wait_until`] on a tokio runtime: `f` returns a future, and the wait between polls
/// yields to other tasks.
pub async fn wait_until_async<T, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let mut n = 0;
        let three = wait_until("n", Duration::from_secs(5), MS, || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(three.unwrap(), 3);
        let never = wait_until::<()>("never", Duration::from_millis(10), MS, || None);
        assert!(never.unwrap_err().to_string().contains("waiting for never"));
    }

    #[test]
    fn a_failing_poll_ends_the_wait_at_once() {
        let mut polls = 0;
        let r = try_wait_until::<()>("x", Duration::from_secs(60), MS, || {
            polls += 1;
            bail!("broken")
        });
        assert_eq!(r.unwrap_err().to_string(), "broken");
        assert_eq!(polls, 1);
    }

    #[tokio::test]
    async fn the_async_twin_polls_times_out_and_fails_the_same_way() {
        let mut n = 0;
        let three = wait_until_async("n", Duration::from_secs(5), MS, || {
            n += 1;
            let v = (n == 3).then_some(n);
            async move { Ok(v) }
        });
        assert_eq!(three.await.unwrap(), 3);
        let never = wait_until_async::<(), _>("never", Duration::from_millis(10), MS, || async {
            Ok(None)
        });
        assert!(never
            .await
            .unwrap_err()
            .to_string()
            .contains("waiting for never"));
        let broken = wait_until_async::<(), _>("x", Duration::from_secs(60), MS, || async {
            bail!("broken")
        });
        assert_eq!(broken.await.unwrap_err().to_string(), "broken");
    }
}
