//! Text Generation Inference's launcher flags (and their environment variables) that ferrite
//! accepts with TGI's meaning, so a TGI deployment's command line starts ferrite unchanged.
//! Flags ferrite has under its own name are aliases here (`--max-input-length` ->
//! `--max-input-tokens`); flags that cannot apply to ferrite are accepted and named in one
//! warning line each at start-up (`notices`), never refused.

use std::path::PathBuf;

use clap::Args as ClapArgs;

use crate::args::{Args, AttentionBackend};

/// The flags, flattened into `Args`. Options left unset keep ferrite's (= TGI's) defaults.
/// (`--max-batch-size` is one of ferrite's own flags, in args.rs.)
#[derive(Debug, Clone, Default, PartialEq, ClapArgs)]
pub struct TgiFlags {
    /// Largest `best_of` a request may ask for (default 2)
    #[arg(long, env)]
    pub max_best_of: Option<u32>,

    /// Most stop sequences a request may give (default 4)
    #[arg(long, env)]
    pub max_stop_sequences: Option<u32>,

    /// Largest `top_n_tokens` a request may ask for (default 5)
    #[arg(long, env)]
    pub max_top_n_tokens: Option<u32>,

    /// TGI's older name of --max-input-tokens (used when --max-input-tokens is not given)
    #[arg(long, env)]
    pub max_input_length: Option<u32>,

    /// Accepted, no effect: ferrite admits waiting requests at every step (chunked prefill)
    #[arg(long, env)]
    pub max_waiting_tokens: Option<u32>,

    /// Accepted, no effect: ferrite admits waiting requests at every step (chunked prefill)
    #[arg(long, env)]
    pub waiting_served_ratio: Option<f32>,

    /// Share of each GPU's memory ferrite may use in total, in (0, 1] (default 0.9); CUDA only
    #[arg(long, env)]
    pub cuda_memory_fraction: Option<f32>,

    /// Largest request body in bytes; larger ones get 413 (default 2000000)
    #[arg(long, env)]
    pub payload_limit: Option<u64>,

    /// Most prompts in one /v1/completions request (default 4)
    #[arg(long, env)]
    pub max_client_batch_size: Option<u32>,

    /// false: one shard (refused with --num-shard above 1); true: give the count with --num-shard
    #[arg(long, env)]
    pub sharded: Option<bool>,

    /// Replace the checkpoint's RoPE scaling: linear or dynamic, with --rope-factor (alone: linear; default factor 1.0, as in TGI)
    #[arg(long, env, value_parser = ["linear", "dynamic"])]
    pub rope_scaling: Option<String>,

    /// RoPE scaling factor (see --rope-scaling); alone it means linear scaling
    #[arg(long, env)]
    pub rope_factor: Option<f32>,

    /// Hugging Face hub cache that --model-id downloads go to (default: HF_HUB_CACHE / HF_HOME)
    #[arg(long, env)]
    pub huggingface_hub_cache: Option<PathBuf>,

    /// Use no custom kernels: --attention-backend auto becomes torch (PyTorch reference), and CPU decode steps run the Python layers instead of the native decoder stack
    #[arg(long, env)]
    pub disable_custom_kernels: bool,

    /// TGI's name of --graceful-shutdown-timeout-s: seconds in-flight requests get on shutdown
    #[arg(long, env)]
    pub graceful_termination_timeout: Option<u64>,

    /// Share of the vocabulary in each watermark greenlist, in (0, 1) (default 0.5)
    #[arg(long, env)]
    pub watermark_gamma: Option<f32>,

    /// Logit bias added to watermark greenlist tokens, >= 0 (default 2.0)
    #[arg(long, env)]
    pub watermark_delta: Option<f32>,

    /// tokenizer_config.json whose chat_template and special tokens the chat routes use
    #[arg(long, env)]
    pub tokenizer_config_path: Option<PathBuf>,

    /// Accepted (on, off, no-stack): ferrite collects and sends no usage statistics anywhere
    #[arg(long, env, value_parser = ["on", "off", "no-stack"])]
    pub usage_stats: Option<String>,
}

/// A TGI flag whose value contradicts another flag or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TgiFlagError {
    #[error("--sharded false contradicts --num-shard {0}: drop one of them")]
    ShardedFalse(u32),
    #[error("{flag} must be {range}, got {value}")]
    OutOfRange {
        flag: &'static str,
        range: &'static str,
        value: String,
    },
}

/// `args` with TGI's names folded into ferrite's own flags (ferrite's name wins when both
/// are given): what the plan is built from.
pub fn fold_aliases(mut args: Args) -> Args {
    let tgi = &args.tgi;
    if args.max_input_tokens.is_none() {
        args.max_input_tokens = tgi.max_input_length;
    }
    if let Some(seconds) = tgi.graceful_termination_timeout {
        args.graceful_shutdown_timeout_s = seconds;
    }
    if tgi.disable_custom_kernels && args.attention_backend == AttentionBackend::Auto {
        args.attention_backend = AttentionBackend::Torch;
    }
    args
}

/// Refusals that need no model (run with the other argument checks).
pub fn check(args: &Args) -> Result<(), TgiFlagError> {
    let tgi = &args.tgi;
    if tgi.sharded == Some(false) && args.num_shard > 1 {
        return Err(TgiFlagError::ShardedFalse(args.num_shard));
    }
    let out_of_range = |flag: &'static str, range: &'static str, value: f32| {
        Err(TgiFlagError::OutOfRange {
            flag,
            range,
            value: value.to_string(),
        })
    };
    if let Some(fraction) = tgi.cuda_memory_fraction {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return out_of_range("--cuda-memory-fraction", "in (0, 1]", fraction);
        }
    }
    if let Some(gamma) = tgi.watermark_gamma {
        if !(gamma > 0.0 && gamma < 1.0) {
            return out_of_range("--watermark-gamma", "in (0, 1)", gamma);
        }
    }
    if let Some(delta) = tgi.watermark_delta {
        if !(delta >= 0.0 && delta.is_finite()) {
            return out_of_range("--watermark-delta", "a finite number >= 0", delta);
        }
    }
    for (flag, value) in [
        ("--max-batch-size", args.max_batch_size),
        ("--max-best-of", tgi.max_best_of),
        ("--max-client-batch-size", tgi.max_client_batch_size),
    ] {
        if value == Some(0) {
            return Err(TgiFlagError::OutOfRange {
                flag,
                range: "at least 1",
                value: "0".into(),
            });
        }
    }
    Ok(())
}

/// One warning line per TGI flag that was given but cannot change what ferrite does.
pub fn notices(args: &Args) -> Vec<String> {
    let tgi = &args.tgi;
    let mut lines = Vec::new();
    let mut note = |given: bool, line: String| {
        if given {
            lines.push(line);
        }
    };
    let scheduler = "ferrite's scheduler admits waiting requests at every step (chunked prefill)";
    note(
        tgi.max_waiting_tokens.is_some(),
        format!("--max-waiting-tokens has no effect: {scheduler}"),
    );
    note(
        tgi.waiting_served_ratio.is_some(),
        format!("--waiting-served-ratio has no effect: {scheduler}"),
    );
    note(
        tgi.sharded == Some(true) && args.num_shard == 1,
        "--sharded true: ferrite does not count the GPUs; pass --num-shard N to shard (running 1 shard)".into(),
    );
    note(
        tgi.disable_custom_kernels && args.attention_backend == AttentionBackend::Triton,
        "--disable-custom-kernels is overridden by --attention-backend triton".into(),
    );
    note(
        tgi.usage_stats.is_some(),
        "--usage-stats has no effect: ferrite collects and sends no usage statistics".into(),
    );
    note(
        tgi.max_input_length.is_some() && args.max_input_tokens.is_some(),
        "--max-input-length is ignored: --max-input-tokens is given".into(),
    );
    lines
}

#[cfg(test)]
#[path = "tgi_flags_tests.rs"]
mod tests;
