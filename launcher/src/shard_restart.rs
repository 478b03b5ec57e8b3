//! A shard group that crashes (OOM kill, segfault, a collective error) is restarted with the
//! same flags, after a growing back-off, within a budget; the router meanwhile keeps its
//! requests and replays them once the shards answer again. When the budget is spent the
//! launcher exits as before, with the shard's death report.

use std::time::Duration;

use crate::logs::Logger;
use crate::plan::LaunchPlan;
use crate::supervisor::{Interrupt, Supervisor};
use crate::{start_shards, LaunchError};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Restarts left, and the back-off before the next one.
#[derive(Debug)]
pub struct RestartBudget {
    max_restarts: u32,
    num_restarts: u32,
}

impl RestartBudget {
    pub fn new(max_restarts: u32) -> Self {
        Self {
            max_restarts,
            num_restarts: 0,
        }
    }

    /// Takes one restart: its number and the back-off before it; None once spent.
    pub fn take(&mut self) -> Option<(u32, Duration)> {
        if self.num_restarts >= self.max_restarts {
            return None;
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.num_restarts.min(5))
            .min(MAX_BACKOFF);
        self.num_restarts += 1;
        Some((self.num_restarts, backoff))
    }
}

/// Handles what ended supervision: a dead shard within budget restarts the group (Ok(Ok)),
/// anything else (a signal, the router dying, the budget spent) is handed back to end.
pub async fn restart_after(
    mut interrupt: Interrupt,
    budget: &mut RestartBudget,
    plan: &LaunchPlan,
    supervisor: &mut Supervisor,
    logger: Logger,
) -> Result<Result<(), Interrupt>, LaunchError> {
    loop {
        let Interrupt::ChildDied { name, report } = &interrupt else {
            return Ok(Err(interrupt));
        };
        if !name.starts_with("shard-") {
            return Ok(Err(interrupt));
        }
        let Some((restart, backoff)) = budget.take() else {
            logger.warn(&format!(
                "{name} died and the restart budget (--max-shard-restarts {}) is spent",
                budget.max_restarts
            ));
            return Ok(Err(interrupt));
        };
        logger.warn(&format!(
            "{report}\nrestarting the shard group in {:.0} s (restart {restart} of {}); the router replays its requests",
            backoff.as_secs_f64(),
            budget.max_restarts
        ));
        supervisor.stop_shards().await;
        if let Err(interrupt) = supervisor.race(tokio::time::sleep(backoff)).await {
            return Ok(Err(interrupt));
        }
        match start_shards(plan, supervisor, logger).await? {
            Ok(()) => {
                logger.info("the shard group is back");
                return Ok(Ok(()));
            }
            Err(next) => interrupt = next, // died again while starting: next restart, if any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_backs_off_and_runs_out() {
        let mut budget = RestartBudget::new(3);
        assert_eq!(budget.take(), Some((1, Duration::from_secs(1))));
        assert_eq!(budget.take(), Some((2, Duration::from_secs(2))));
        assert_eq!(budget.take(), Some((3, Duration::from_secs(4))));
        assert_eq!(budget.take(), None);
        assert_eq!(RestartBudget::new(0).take(), None);
    }

    #[test]
    fn the_back_off_is_capped() {
        let mut budget = RestartBudget::new(10);
        let last = std::iter::from_fn(|| budget.take()).last();
        assert_eq!(last, Some((10, MAX_BACKOFF)));
    }
}
