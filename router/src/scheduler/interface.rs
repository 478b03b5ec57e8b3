//! What the HTTP layer hands the scheduler, and what it gets back.
//!
//! The HTTP layer validates and tokenizes, then `submit`s a `GenerationRequest`; the scheduler
//! streams `GenerationEvent`s back on the returned channel. Dropping the receiver cancels the
//! request: the scheduler notices at its next step, releases the request's KV blocks and tells
//! the shard to forget it. Stop sequences are matched on text by the HTTP layer, which then
//! simply drops the receiver.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::metrics::histogram::HistogramSnapshot;
use crate::metrics::steps::StepMetricsSnapshot;
use crate::proto;

/// A validated, tokenized request ready to be scheduled.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub input_ids: Vec<u32>,
    /// Sampling / stopping / logprob wishes, passed to the shard unchanged.
    pub parameters: proto::RequestParameters,
    /// When the HTTP layer accepted the request (queue time is measured from here).
    pub received_at: Instant,
    /// Past it the request fails with `TimedOut` (never sent to a shard if still queued).
    pub deadline: Option<Instant>,
    /// The API request's span: the scheduler hangs the sequence's queue / prefill / decode
    /// spans under it. `Span::none()` when nobody traces the request.
    pub span: tracing::Span,
}

/// One generated token as the shard reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub logprob: f32,
    /// (token id, logprob), most likely first.
    pub top_tokens: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFinish {
    Eos,
    Length,
}

#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// The prompt is fully computed. `prompt_logprobs` is aligned with the input ids (NaN for
    /// the first) when they were asked for, else empty.
    PrefillDone {
        prompt_logprobs: Vec<f32>,
        queue_time: Duration,
    },
    /// A new token; `finish` is set on the last one.
    Token {
        token: Token,
        finish: Option<ShardFinish>,
    },
    /// The request failed; no more events follow.
    Error(GenerationError),
}

/// Where a request was when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Still waiting for admission: nothing of it was computed.
    Queued,
    /// Admitted: some of it was computed (or streamed).
    Generating,
}

impl TimeoutPhase {
    fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Queued => "waiting in the queue",
            TimeoutPhase::Generating => "generating",
        }
    }
}

/// Why an accepted request failed after admission (mapped to HTTP 424 by the error module,
/// timeouts to 408 / 504).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GenerationError {
    #[error("Request timed out: its {budget_s:.3} s time limit passed while {}", phase.as_str())]
    TimedOut { budget_s: f64, phase: TimeoutPhase },
    #[error("generation failed in the shard: {0}")]
    Shard(String),
    #[error("the request needs {needed_blocks} KV blocks but the cache only has {total_blocks}")]
    TooLargeForCache {
        needed_blocks: usize,
        total_blocks: usize,
    },
}

/// Why `submit` refused a request (mapped to HTTP 429 / 503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    #[error("Model is overloaded: {max_waiting} requests are already waiting")]
    QueueFull { max_waiting: usize },
    #[error("the scheduler has stopped")]
    Stopped,
}

pub type EventReceiver = mpsc::UnboundedReceiver<GenerationEvent>;

/// A snapshot of the scheduler's state, for `/metrics` and `/info`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerStats {
    pub waiting_requests: usize,
    pub running_requests: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    /// Blocks indexed in the prefix cache (held or free).
    pub kv_blocks_cached: usize,
    /// Prompt tokens looked up in the prefix cache at admission, and those found.
    pub prefix_cache_query_tokens_total: u64,
    pub prefix_cache_hit_tokens_total: u64,
    /// Cached blocks dropped to make room.
    pub prefix_cache_evicted_blocks_total: u64,
    /// Prompt tokens sent to be computed (chunks), cached ones excluded.
    pub prompt_tokens_computed_total: u64,
    pub preemptions_total: u64,
    /// Steps sent while the shard still computed the step before (asynchronous scheduling).
    pub steps_sent_ahead_total: u64,
    /// The shards could not be reached; the scheduler waits for them to come back.
    pub shards_unreachable: bool,
    /// Times the shards came back after being unreachable, and requests replayed on them.
    pub shard_recoveries_total: u64,
    pub replayed_requests_total: u64,
    pub steps_total: u64,
    /// Requests and tokens in the most recent step.
    pub last_batch_size: usize,
    pub last_batch_tokens: usize,
    /// Sum over steps of the shard-reported forward time and of the step's wall time.
    pub forward_ns_total: u64,
    pub step_wall_ns_total: u64,
    /// Per-step histograms by method (prefill / decode).
    pub steps: StepMetricsSnapshot,
    /// Speculative decoding: tokens proposed and verified, those accepted, and how many
    /// were accepted per verified decode.
    pub speculative_proposed_tokens_total: u64,
    pub speculative_accepted_tokens_total: u64,
    pub speculative_accepted_per_decode: HistogramSnapshot,
}

/// The HTTP layer's handle on the scheduler (a trait so HTTP tests can use a fake).
pub trait RequestSubmitter: Send + Sync + 'static {
    /// Queue a request; 429-style refusal when the waiting queue is full.
    fn submit(&self, request: GenerationRequest) -> Result<EventReceiver, AdmissionError>;
    fn stats(&self) -> SchedulerStats;
}

/// Limits the scheduler works within (derived by the router's config from flags + Warmup).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens per KV block (from Info).
    pub block_size: usize,
    /// KV blocks the shard holds (from Warmup).
    pub num_blocks: usize,
    /// Most prompt tokens computed in one step; longer prompts are chunked.
    pub max_batch_prefill_tokens: usize,
    /// Most tokens (prompt + generated, over all running requests) resident at once.
    pub max_batch_total_tokens: usize,
    /// Most requests in one step.
    pub max_batch_size: usize,
    /// Longest sequence (prompt + generated) admitted; a restarted shard is warmed up for it.
    pub max_total_tokens: usize,
    /// Most requests waiting for admission before `submit` answers QueueFull.
    pub max_waiting_requests: usize,
    /// Reuse the KV blocks of identical token prefixes (prompts and earlier turns).
    pub prefix_caching: bool,
    /// Speculative decoding: KV slots reserved after each decode for tokens the shard
    /// proposes and verifies in the same step (0: off).
    pub num_speculative_tokens: usize,
    /// Most distinct LoRA adapters among a step's requests; requests of another adapter wait.
    pub max_loras_per_batch: usize,
    /// Plan and send step n+1 while the shard computes step n (ignored with speculation,
    /// whose verify steps produce a number of tokens known only when they end).
    pub async_scheduling: bool,
}

impl SchedulerConfig {
    /// The Warmup that sizes a shard for these limits (sent again after a shard restart).
    pub fn warmup_request(&self) -> proto::WarmupRequest {
        let to_u32 = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        proto::WarmupRequest {
            max_batch_prefill_tokens: to_u32(self.max_batch_prefill_tokens),
            max_batch_size: to_u32(self.max_batch_size),
            max_total_tokens: to_u32(self.max_total_tokens),
            num_speculative_tokens: to_u32(self.num_speculative_tokens),
        }
    }
}
