//! Timers set with `ctx.after` and `ctx.every`. They run on the tick clock (the sum of the `dt`
//! of every `Event::Tick`), not on wall time, so a match paused between ticks does not fire a
//! burst of timers when it resumes, and tests are deterministic.

use mlua::Function;

/// Live timers one runtime may hold. Timers live in the host's memory, outside the Lua cap, so
/// their number is bounded.
pub(super) const MAX_TIMERS: usize = 10_000;

pub(super) type TimerId = u64;

#[derive(Default)]
pub(super) struct Timers {
    /// Seconds of ticks seen so far.
    clock: f64,
    next_id: TimerId,
    entries: Vec<Timer>,
}

struct Timer {
    id: TimerId,
    due: f64,
    /// `Some(interval)` for `ctx.every`.
    interval: Option<f64>,
    callback: Function,
}

impl Timers {
    /// Schedules `callback` `delay` seconds of ticks from now, then every `interval` seconds if
    /// one is given.
    pub(super) fn add(
        &mut self,
        delay: f64,
        interval: Option<f64>,
        callback: Function,
    ) -> Result<TimerId, String> {
        if self.entries.len() >= MAX_TIMERS {
            return Err(format!(
                "too many timers: a runtime may hold at most {MAX_TIMERS}"
            ));
        }
        self.next_id += 1;
        let id = self.next_id;
        self.entries.push(Timer {
            id,
            due: self.clock + delay,
            interval,
            callback,
        });
        Ok(id)
    }

    /// Whether a timer was removed.
    pub(super) fn cancel(&mut self, id: TimerId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|timer| timer.id != id);
        self.entries.len() != before
    }

    pub(super) fn advance(&mut self, dt: f64) {
        if dt.is_finite() && dt > 0.0 {
            self.clock += dt;
        }
    }

    /// A mark taken at the start of a tick: timers created after it (by `on_tick` or by another
    /// timer) wait for the next tick, so `ctx.after(0, f)` means "on the next tick".
    pub(super) fn fence(&self) -> TimerId {
        self.next_id
    }

    /// Timers due now and created before `fence`, earliest first, then in creation order.
    pub(super) fn due(&self, fence: TimerId) -> Vec<TimerId> {
        let mut due: Vec<(f64, TimerId)> = self
            .entries
            .iter()
            .filter(|timer| timer.id <= fence && timer.due <= self.clock)
            .map(|timer| (timer.due, timer.id))
            .collect();
        due.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// The callback of a due timer about to fire; `None` if it was cancelled meanwhile. A
    /// one-shot timer is removed; a repeating one is rescheduled, at most once per tick: when
    /// ticks are slower than its interval it skips ahead rather than firing in bursts.
    pub(super) fn fire(&mut self, id: TimerId) -> Option<Function> {
        let position = self.entries.iter().position(|timer| timer.id == id)?;
        let timer = &mut self.entries[position];
        match timer.interval {
            Some(interval) => {
                timer.due += interval;
                if timer.due <= self.clock {
                    timer.due = self.clock + interval;
                }
                Some(timer.callback.clone())
            }
            None => Some(self.entries.swap_remove(position).callback),
        }
    }
}
