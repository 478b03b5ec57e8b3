//! Grammars are compiled by the shards before a constrained request is queued (the router
//! waits here, in the request's own task; the step loop never does), so a grammar that fails,
//! is unsupported or passes the shard's limits is a 422 naming the problem.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::proto;

pub type CompileFuture<'a> =
    Pin<Box<dyn Future<Output = Result<proto::CompileGrammarResponse, String>> + Send + 'a>>;

/// Who compiles grammars: the shard group (`GrpcShardClient`), or a stand-in in tests.
pub trait GrammarCompiler: Send + Sync + 'static {
    /// Ok with the shard's answer (whose `error` may say the grammar is refused); Err when the
    /// shards could not be asked.
    fn compile(&self, grammar: proto::Grammar) -> CompileFuture<'_>;
}

/// Accepts every grammar as compiled (router tests without a shard).
#[derive(Debug, Default)]
pub struct AcceptAll;

impl GrammarCompiler for AcceptAll {
    fn compile(&self, _: proto::Grammar) -> CompileFuture<'_> {
        Box::pin(async { Ok(proto::CompileGrammarResponse::default()) })
    }
}

pub fn accept_all() -> Arc<dyn GrammarCompiler> {
    Arc::new(AcceptAll)
}
