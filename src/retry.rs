//! The backoff of a write that must happen even while Redis fails for a
//! while (a topic's listing that must agree with the topic, a pruned
//! tenant's re-check): pauses from 100 ms doubling up to 5 s, 30 attempts,
//! about two minutes in all. Pure timing: it must not talk to Redis.

use std::time::Duration;

/// Attempts in all.
const ATTEMPTS: u32 = 30;
/// Pause after the first failed attempt; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// See [`FIRST_PAUSE`].
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Attempts left and the next pause of one retried write.
#[derive(Debug)]
pub struct Backoff {
    attempts_left: u32,
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempts_left: ATTEMPTS,
            pause: FIRST_PAUSE,
        }
    }
}

impl Backoff {
    /// Counts an attempt about to be made; false when none is left.
    pub fn attempt(&mut self) -> bool {
        let left = self.attempts_left > 0;
        self.attempts_left = self.attempts_left.saturating_sub(1);
        left
    }

    /// Whether the attempt being made is the last.
    pub fn exhausted(&self) -> bool {
        self.attempts_left == 0
    }

    /// The pause after a failed attempt (each one twice the last, at most
    /// [`MAX_PAUSE`]).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (pause * 2).min(MAX_PAUSE);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_attempts_about_two_minutes_apart_in_all() {
        let mut backoff = Backoff::default();
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        while backoff.attempt() {
            attempts += 1;
            if !backoff.exhausted() {
                waited += backoff.next_pause();
            }
        }
        assert_eq!(attempts, 30);
        assert_eq!(
            waited,
            Duration::from_millis(100 + 200 + 400 + 800 + 1600 + 3200)
                + Duration::from_secs(5 * 23)
        );
    }
}
