//! Why a request is refused before it reaches the scheduler. Messages follow TGI's wording and
//! always state the limit and the numbers given (DESIGN.md pain point 1). `error.rs` prefixes
//! them with "Input validation error: " and answers 422.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("`inputs` cannot be empty")]
    EmptyInput,
    #[error("`inputs` must have less than {max_input_tokens} tokens. Given: {input_tokens}")]
    InputLength {
        max_input_tokens: usize,
        input_tokens: usize,
    },
    #[error(
        "`inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. \
         Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
    )]
    MaxTotalTokens {
        max_total_tokens: usize,
        input_tokens: usize,
        max_new_tokens: u32,
    },
    #[error("`max_new_tokens` must be strictly positive")]
    MaxNewTokens,
    #[error(
        "`truncate` must be strictly positive and less than {max_input_tokens}. Given: {given}"
    )]
    Truncate {
        max_input_tokens: usize,
        given: usize,
    },
    #[error("`best_of` must be > 0 and <= {max_best_of}. Given: {given}")]
    BestOf { max_best_of: usize, given: usize },
    #[error("`best_of` != 1 is not supported when streaming tokens")]
    BestOfStream,
    #[error("you must use sampling when `best_of` is > 1")]
    BestOfSampling,
    #[error("`seed` must not be set when `best_of` > 1")]
    BestOfSeed,
    #[error("`decoder_input_details` == true is not supported when streaming tokens")]
    PrefillDetailsStream,
    #[error("`decoder_input_details` == true is not supported by this model's shard")]
    PrefillDetailsUnsupported,
    #[error("`top_n_tokens` must be >= 0 and <= {max_top_n_tokens}. Given: {given}")]
    TopNTokens { max_top_n_tokens: u32, given: u32 },
    #[error("`temperature` must be strictly positive")]
    Temperature,
    #[error("`repetition_penalty` must be strictly positive")]
    RepetitionPenalty,
    #[error("`frequency_penalty` must be >= -2.0 and <= 2.0")]
    FrequencyPenalty,
    #[error("`top_p` must be > 0.0 and < 1.0")]
    TopP,
    #[error("`top_k` must be strictly positive")]
    TopK,
    #[error("`typical_p` must be > 0.0 and < 1.0")]
    TypicalP,
    #[error("`stop` supports up to {max_stop_sequences} stop sequences. Given: {given}")]
    StopSequences {
        max_stop_sequences: usize,
        given: usize,
    },
    #[error("`stop` sequences must not be empty strings")]
    EmptyStopSequence,
    #[error(
        "adapter `{given}` is not loaded; loaded adapters: {known}; the base model is \
         `{base_model_id}`"
    )]
    UnknownAdapter {
        given: String,
        known: String,
        base_model_id: String,
    },
    #[error("grammar: {0}")]
    Grammar(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("the `x-request-timeout-s` header must be a positive number of seconds. Given: {0:?}")]
    RequestTimeoutHeader(String),
}
