//! Retry backoff math: `initial_ms * multiplier^(attempt-1)`, capped at
//! `max_ms`, then spread by ± `jitter` so a burst of failures does not come
//! back as a burst of retries. Pure, so it is unit-tested here; the random
//! spread is an argument so tests can pin it.

use super::groups::Backoff;

/// Delay before the retry that follows failed attempt `attempt` (1-based).
/// `spread` is a uniform random number in `[-1.0, 1.0]`.
pub fn retry_delay_ms(backoff: &Backoff, attempt: u64, spread: f64) -> u64 {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let base = (backoff.initial_ms as f64) * backoff.multiplier.powi(exponent);
    let capped = base.min(backoff.max_ms as f64);
    let jittered = capped * (1.0 + backoff.jitter * spread.clamp(-1.0, 1.0));
    // Finite and non-negative by construction; `as` saturates anyway.
    jittered.max(0.0).round() as u64
}

/// A uniform random spread in `[-1.0, 1.0]` for [`retry_delay_ms`].
pub fn random_spread() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter: f64) -> Backoff {
        Backoff {
            initial_ms: 1000,
            max_ms: 60_000,
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn grows_geometrically_and_caps() {
        let b = backoff(0.0);
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay_ms(&b, a, 0.0)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(retry_delay_ms(&b, u64::MAX, 0.0), 60000, "no overflow");
    }

    #[test]
    fn jitter_spreads_within_the_fraction() {
        let b = backoff(0.2);
        assert_eq!(retry_delay_ms(&b, 1, -1.0), 800);
        assert_eq!(retry_delay_ms(&b, 1, 1.0), 1200);
        assert_eq!(retry_delay_ms(&b, 3, 0.5), 4400);
        for _ in 0..1000 {
            let d = retry_delay_ms(&b, 2, random_spread());
            assert!((1600..=2400).contains(&d), "{d}");
        }
    }

    #[test]
    fn max_below_initial_caps_every_delay() {
        let b = Backoff {
            initial_ms: 500,
            max_ms: 100,
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert!((1..=5).all(|a| retry_delay_ms(&b, a, 0.0) == 100));
    }

    #[test]
    fn multiplier_one_is_constant() {
        let b = Backoff {
            initial_ms: 250,
            max_ms: 10_000,
            multiplier: 1.0,
            jitter: 0.0,
        };
        assert!((1..=20).all(|a| retry_delay_ms(&b, a, 0.0) == 250));
    }
}
