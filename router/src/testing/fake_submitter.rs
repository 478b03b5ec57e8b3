//! A `RequestSubmitter` standing in for the scheduler in HTTP tests: it answers from a script,
//! holds channels for the test to drive by hand, or refuses like a full queue.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::scheduler::interface::{
    AdmissionError, EventReceiver, GenerationEvent, GenerationRequest, RequestSubmitter,
    SchedulerStats, ShardFinish, Token,
};
use crate::tokenizer::TextTokenizer;

use super::tiny_tokenizer::{ids_of, special_id, EOS};

pub type Script = Box<dyn Fn(&GenerationRequest) -> Vec<GenerationEvent> + Send + Sync>;

pub enum Behaviour {
    /// Every event of the script is sent at once, then the sender is dropped.
    Script(Script),
    /// Senders are kept (see `held`) for the test to send events and watch for cancellation.
    Hold,
    /// Every request is refused as if the waiting queue were full.
    QueueFull,
}

pub struct FakeSubmitter {
    behaviour: Behaviour,
    submitted: Mutex<Vec<GenerationRequest>>,
    held: Mutex<Vec<mpsc::UnboundedSender<GenerationEvent>>>,
    stats: SchedulerStats,
}

impl FakeSubmitter {
    pub fn new(behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Self {
            behaviour,
            submitted: Mutex::default(),
            held: Mutex::default(),
            stats: SchedulerStats {
                kv_blocks_total: 64,
                kv_blocks_free: 60,
                ..Default::default()
            },
        })
    }

    /// Replies with `reply`'s tokens (see `reply_events`).
    pub fn replying(tokenizer: Arc<TextTokenizer>, reply: &str) -> Arc<Self> {
        let reply = reply.to_string();
        Self::new(Behaviour::Script(Box::new(move |request| {
            reply_events(&tokenizer, &reply, request)
        })))
    }

    pub fn submitted(&self) -> Vec<GenerationRequest> {
        self.submitted.lock().expect("lock").clone()
    }

    pub fn held(&self) -> Vec<mpsc::UnboundedSender<GenerationEvent>> {
        self.held.lock().expect("lock").clone()
    }

    /// Waits until `count` requests are held (the handler runs in another task).
    pub async fn wait_for_held(&self, count: usize) -> Vec<mpsc::UnboundedSender<GenerationEvent>> {
        loop {
            let held = self.held();
            if held.len() >= count {
                return held;
            }
            tokio::task::yield_now().await;
        }
    }
}

impl RequestSubmitter for FakeSubmitter {
    fn submit(&self, request: GenerationRequest) -> Result<EventReceiver, AdmissionError> {
        if matches!(self.behaviour, Behaviour::QueueFull) {
            return Err(AdmissionError::QueueFull { max_waiting: 2 });
        }
        // Recorded without its span: holding the span would keep the request's trace open,
        // which the real scheduler does only while the request runs.
        let recorded = GenerationRequest {
            span: tracing::Span::none(),
            ..request.clone()
        };
        self.submitted.lock().expect("lock").push(recorded);
        let (sender, receiver) = mpsc::unbounded_channel();
        match &self.behaviour {
            Behaviour::Script(script) => {
                for event in script(&request) {
                    // The receiver may already be gone (cancelled); like the scheduler, ignore.
                    let _ = sender.send(event);
                }
            }
            Behaviour::Hold => self.held.lock().expect("lock").push(sender),
            Behaviour::QueueFull => {}
        }
        Ok(receiver)
    }

    fn stats(&self) -> SchedulerStats {
        self.stats.clone()
    }
}

/// A deterministic generation: the tokens of `reply`, cut at `max_new_tokens` (finish Length)
/// or followed by EOS (finish Eos). Logprobs depend on the seed so `best_of` has a winner;
/// prompt logprobs and top tokens come when asked.
pub fn reply_events(
    tokenizer: &TextTokenizer,
    reply: &str,
    request: &GenerationRequest,
) -> Vec<GenerationEvent> {
    let parameters = &request.parameters;
    let max_new_tokens = parameters
        .stopping
        .as_ref()
        .map_or(u32::MAX, |s| s.max_new_tokens) as usize;
    let seed = parameters.sampling.as_ref().map_or(0, |s| s.seed);
    let mut ids = ids_of(tokenizer, reply);
    ids.push(special_id(tokenizer, EOS));
    ids.truncate(max_new_tokens);
    let prompt_logprobs = if parameters.prompt_logprobs {
        let mut logprobs = vec![-1.5; request.input_ids.len()];
        logprobs[0] = f32::NAN;
        logprobs
    } else {
        Vec::new()
    };
    let mut events = vec![GenerationEvent::PrefillDone {
        prompt_logprobs,
        queue_time: std::time::Duration::from_millis(3),
    }];
    let last = ids.len() - 1;
    for (position, &id) in ids.iter().enumerate() {
        let logprob = -0.1 * (1 + seed % 7) as f32;
        let top_tokens = (0..parameters.top_n_tokens)
            .map(|rank| (id + rank, logprob - rank as f32))
            .collect();
        let finish = (position == last).then(|| {
            if tokenizer.is_special(id) {
                ShardFinish::Eos
            } else {
                ShardFinish::Length
            }
        });
        events.push(GenerationEvent::Token {
            token: Token {
                id,
                logprob,
                top_tokens,
            },
            finish,
        });
    }
    events
}
