//! When a transiently failed send is tried again. One `RetryPolicy`, built
//! once from `VERIMAIL_RETRY_SCHEDULE` and `VERIMAIL_MAX_ATTEMPTS`, chooses
//! the wait (`process::after_transient`), the delay queue a message is
//! parked in (the consumer) and the delay queues declared on the broker
//! (consumer and publisher), so a wait always has its queue.

use std::time::Duration;

/// The wait of a policy built from an empty schedule.
const FALLBACK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Waits between attempts, in order; never empty.
    schedule: Vec<Duration>,
    /// Attempts in all, the first included.
    max_attempts: u32,
}

impl RetryPolicy {
    /// The n-th retry waits `schedule[n-1]`; the last entry repeats.
    pub fn new(schedule: Vec<Duration>, max_attempts: u32) -> Self {
        let schedule = if schedule.is_empty() {
            vec![FALLBACK_WAIT]
        } else {
            schedule
        };
        Self {
            schedule,
            max_attempts,
        }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait before the attempt after `attempts` failed ones.
    pub fn wait_after(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.schedule.len() - 1);
        self.schedule[index]
    }

    /// The delay queues to declare: one per distinct wait, shortest first.
    pub fn delay_queues(&self) -> Vec<Duration> {
        let mut delays = self.schedule.clone();
        delays.sort();
        delays.dedup();
        delays
    }

    /// The declared delay queue to park a message in for at least `wait`
    /// (the longest one if none waits that long).
    pub fn queue_for(&self, wait: Duration) -> Duration {
        let delays = self.delay_queues();
        delays
            .iter()
            .copied()
            .find(|d| *d >= wait)
            .or(delays.last().copied())
            .unwrap_or(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().copied().map(Duration::from_secs).collect()
    }

    #[test]
    fn every_wait_chosen_is_a_declared_queue() {
        let policy = RetryPolicy::new(secs(&[30, 5, 30, 120]), 9);
        assert_eq!(policy.delay_queues(), secs(&[5, 30, 120]));
        for attempts in 0..10 {
            let wait = policy.wait_after(attempts);
            assert!(policy.delay_queues().contains(&wait), "{wait:?}");
            assert_eq!(policy.queue_for(wait), wait);
        }
        assert_eq!(policy.wait_after(1), Duration::from_secs(30));
        assert_eq!(policy.wait_after(2), Duration::from_secs(5));
        assert_eq!(policy.wait_after(9), Duration::from_secs(120));
    }

    #[test]
    fn a_wait_between_queues_parks_in_the_next_longer_one() {
        let policy = RetryPolicy::new(secs(&[5, 30]), 3);
        assert_eq!(policy.queue_for(Duration::from_secs(6)), secs(&[30])[0]);
        assert_eq!(policy.queue_for(Duration::from_secs(99)), secs(&[30])[0]);
    }

    #[test]
    fn an_empty_schedule_waits_five_seconds_in_a_declared_queue() {
        let policy = RetryPolicy::new(Vec::new(), 3);
        assert_eq!(policy.wait_after(1), FALLBACK_WAIT);
        assert_eq!(policy.delay_queues(), vec![FALLBACK_WAIT]);
    }
}
