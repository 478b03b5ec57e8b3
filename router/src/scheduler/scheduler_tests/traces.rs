//! Spans and step metrics of the real scheduler against the fake shard: each sequence's
//! queue / prefill / decode spans hang under its request span, and every step's `shard_step`
//! span hangs under the oldest traced request's current phase, linking the others.

use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::SpanData;

use super::*;
use crate::metrics::steps::StepMethod;
use crate::telemetry::test_exporter::record_spans_on_this_thread;

fn traced(prompt: Vec<u32>, max_new_tokens: u32, span: tracing::Span) -> GenerationRequest {
    GenerationRequest {
        span,
        ..request(prompt, max_new_tokens, false)
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn span_id_of(spans: &[SpanData], name: &str, parent: SpanId) -> SpanId {
    let found: Vec<_> = spans
        .iter()
        .filter(|span| span.name == name && span.parent_span_id == parent)
        .collect();
    assert_eq!(found.len(), 1, "one {name} under {parent}: {found:?}");
    found[0].span_context.span_id()
}

#[tokio::test]
async fn phases_and_steps_form_one_tree_per_request() {
    let (_default, exporter) = record_spans_on_this_thread();
    let fake = fake(4, 64);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let first = tracing::info_span!("request", which = "first");
    let second = tracing::info_span!("request", which = "second");
    // Both are waiting before the scheduler task first runs: they share every step.
    let receivers = [
        handle.submit(traced(prompt(6, 10), 3, first.clone())),
        handle.submit(traced(prompt(5, 20), 3, second.clone())),
    ]
    .map(|receiver| receiver.expect("admitted"));
    drop((first, second));
    for received in join_all(receivers.into_iter().map(collect)).await {
        assert_eq!(received.token_ids.len(), 3);
    }
    let stats = wait_for_drain(&handle).await;
    drop(handle);

    let spans = exporter.finished_spans();
    let requests = named(&spans, "request");
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let oldest = requests
        .iter()
        .find(|span| {
            span.attributes
                .iter()
                .any(|kv| kv.value.as_str() == "first")
        })
        .expect("first request")
        .span_context
        .span_id();
    let mut phase_ids = Vec::new();
    for request in &requests {
        let request_id = request.span_context.span_id();
        for name in ["queue", "prefill", "decode"] {
            phase_ids.push((name, request_id, span_id_of(&spans, name, request_id)));
        }
    }
    let steps = named(&spans, "shard_step");
    assert_eq!(steps.len(), fake.steps().len());
    let oldest_prefill = span_id_of(&spans, "prefill", oldest);
    let oldest_decode = span_id_of(&spans, "decode", oldest);
    for step in &steps {
        assert!(
            [oldest_prefill, oldest_decode].contains(&step.parent_span_id),
            "step under the oldest request's phase: {step:?}"
        );
        // A decode step hangs under the decode phase, also the first one, which asynchronous
        // scheduling sends before the prompt's step answered.
        let is_decode = step
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "method" && kv.value.as_str() == "decode");
        if is_decode {
            assert_eq!(step.parent_span_id, oldest_decode, "{step:?}");
        }
        // The other request is in every step: it is linked, under its own phase span.
        assert_eq!(step.links.len(), 1);
        let linked = step.links[0].span_context.span_id();
        assert!(phase_ids
            .iter()
            .any(|&(_, request, phase)| request != oldest && phase == linked));
    }
    // The step metrics count the same steps, split by method.
    let prefill_steps = fake.steps().iter().filter(|s| s.num_chunks > 0).count() as u64;
    let decode_steps = fake.steps().len() as u64 - prefill_steps;
    assert_eq!(
        stats.steps.method(StepMethod::Prefill).num_steps,
        prefill_steps
    );
    assert_eq!(
        stats.steps.method(StepMethod::Decode).num_steps,
        decode_steps
    );
    assert_eq!(
        stats.steps.method(StepMethod::Prefill).tokens.sum,
        11.0,
        "both prompts computed in prefill steps"
    );
}
