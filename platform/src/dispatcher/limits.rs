//! The player-facing limits in force, and the token bucket that holds each client to its
//! message rate.

use crate::config::Config;
use rally_sdk::player::Limits;
use std::time::{Duration, Instant};

/// The player-facing limits in force.
#[derive(Debug, Clone)]
pub struct PlayerLimits {
    pub max_frame_bytes: usize,
    pub messages_per_sec: u32,
    pub reconnect_grace: Duration,
    pub outbox_events: usize,
    pub heartbeat: Duration,
    pub matchmaking_timeout: Duration,
}

impl PlayerLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_frame_bytes: config.player_max_frame_bytes,
            messages_per_sec: config.player_messages_per_sec,
            reconnect_grace: Duration::from_secs(config.player_reconnect_grace_secs),
            outbox_events: config.player_outbox_events,
            heartbeat: Duration::from_secs(config.player_heartbeat_secs),
            matchmaking_timeout: Duration::from_secs(config.matchmaking_timeout_secs),
        }
    }

    pub(super) fn announced(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes as u32,
            messages_per_sec: self.messages_per_sec,
            reconnect_grace_secs: self.reconnect_grace.as_secs() as u32,
        }
    }
}

/// Token bucket for a client's message rate.
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) refilled_at: Instant,
    /// When a `rate_limited` error was last sent: at most one a second.
    pub(super) reported_at: Option<Instant>,
}

impl Bucket {
    pub(super) fn full(rate: u32) -> Self {
        Self {
            tokens: f64::from(rate),
            refilled_at: Instant::now(),
            reported_at: None,
        }
    }

    pub(super) fn take(&mut self, rate: u32, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(super) fn should_report(&mut self, now: Instant) -> bool {
        let report = self
            .reported_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if report {
            self.reported_at = Some(now);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_second_of_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 10.0,
            refilled_at: start,
            reported_at: None,
        };
        let passed = (0..20).filter(|_| bucket.take(10, start)).count();
        assert_eq!(passed, 10);
        assert!(!bucket.take(10, start + Duration::from_millis(50)));
        assert!(bucket.take(10, start + Duration::from_millis(150)));
        assert!(bucket.should_report(start));
        assert!(!bucket.should_report(start + Duration::from_millis(500)));
        assert!(bucket.should_report(start + Duration::from_millis(1500)));
    }
}
