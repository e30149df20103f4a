//! The one retry delay of the crate: exponential backoff from an initial
//! delay, doubling up to a cap, reset after success. Every loop that waits
//! before trying again (reconnecting archivers, uploads, the `pitr run`
//! supervisor) takes its delays from here.

use std::time::Duration;

/// Delays `initial, 2·initial, 4·initial, …` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        self.next_capped(self.max)
    }

    /// Like [`Backoff::next_delay`] with a lower cap for this kind of wait.
    pub fn next_capped(&mut self, cap: Duration) -> Duration {
        let d = self.next.min(cap);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success: start again at the initial delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(250), ms(1500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![250, 500, 1000, 1500, 1500]);
        b.reset();
        assert_eq!(b.next_capped(ms(100)), ms(100));
        assert_eq!(b.next_delay(), ms(500));
        assert_eq!(Backoff::new(ms(10), ms(5)).next_delay(), ms(5));
    }
}
