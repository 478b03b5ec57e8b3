//! `--speculate N --speculative-method draft --draft-model-id X`: the flag checks, preparing the
//! draft model the way `--model-id` is prepared, and giving its directory to every shard (each
//! shard runs the draft beside the model; the router needs nothing more than `--speculate`).

use std::path::Path;

use crate::args::Args;
use crate::model::looks_like_path;
use crate::plan::{prepare_command, LaunchPlan, ProcessSpec, Programs};
use crate::topology::Topology;

const DRAFT: &str = "draft";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error("--speculative-method draft needs --draft-model-id (a smaller model with the same tokenizer)")]
    MissingDraftModel,
    #[error("--draft-model-id is only used with --speculative-method draft")]
    UnusedDraftModel,
    #[error("--speculative-method draft needs --speculate N (tokens the draft proposes per step)")]
    NoSpeculate,
    #[error("--speculative-method draft runs with one shard, not {0}; with tensor parallelism use --speculative-method ngram")]
    TensorParallel(u32),
    #[error("--draft-model-id {0}: no such file or directory")]
    MissingPath(String),
}

/// Checks that need no model (run with the other early checks).
pub fn check_args(args: &Args) -> Result<(), DraftError> {
    let wants_draft = args.speculative_method == DRAFT;
    match (&args.draft_model_id, wants_draft) {
        (None, true) => return Err(DraftError::MissingDraftModel),
        (Some(_), false) => return Err(DraftError::UnusedDraftModel),
        (Some(id), true) if looks_like_path(id) && !Path::new(id).exists() => {
            return Err(DraftError::MissingPath(id.clone()));
        }
        _ => {}
    }
    if !wants_draft {
        return Ok(());
    }
    if args.speculate.unwrap_or(0) == 0 {
        return Err(DraftError::NoSpeculate);
    }
    let world_size = Topology::from_args(args).world_size();
    if world_size > 1 {
        return Err(DraftError::TensorParallel(world_size));
    }
    Ok(())
}

/// The `ferrite-server prepare-model` call for the draft model (its own name among the
/// launcher's children; `--revision` is the model's, not the draft's).
pub fn prepare_draft_command(
    args: &Args,
    programs: &Programs,
    draft_model_id: &str,
) -> ProcessSpec {
    let mut draft_args = args.clone();
    draft_args.model_id = Some(draft_model_id.to_string());
    draft_args.revision = None;
    let mut spec = prepare_command(&draft_args, programs);
    spec.name = "prepare-draft".into();
    spec
}

/// Every shard loads the prepared draft model.
pub fn add_draft_model(plan: &mut LaunchPlan, draft_dir: &Path) {
    for shard in &mut plan.shards {
        let argv = &mut shard.process.args;
        argv.push("--draft-model-id".into());
        argv.push(draft_dir.display().to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::model::ModelFacts;
    use crate::plan::build_plan;

    fn args(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("ferrite-launcher").chain(flags.iter().copied()))
            .expect("test flags parse")
    }

    fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
        let position = argv.iter().position(|arg| arg == flag)?;
        argv.get(position + 1).map(String::as_str)
    }

    const DRAFT_FLAGS: [&str; 6] = [
        "--speculate",
        "3",
        "--speculative-method",
        "draft",
        "--draft-model-id",
        "/",
    ];

    #[test]
    fn the_draft_flags_go_together() {
        assert_eq!(check_args(&args(&DRAFT_FLAGS)), Ok(()));
        assert_eq!(check_args(&args(&["--speculate", "3"])), Ok(()));
        assert_eq!(
            check_args(&args(&[
                "--speculate",
                "3",
                "--speculative-method",
                "draft"
            ])),
            Err(DraftError::MissingDraftModel)
        );
        assert_eq!(
            check_args(&args(&["--speculate", "3", "--draft-model-id", "/"])),
            Err(DraftError::UnusedDraftModel)
        );
        assert_eq!(
            check_args(&args(&DRAFT_FLAGS[2..])),
            Err(DraftError::NoSpeculate)
        );
        assert_eq!(
            check_args(&args(&[&DRAFT_FLAGS[..], &["--num-shard", "2"]].concat())),
            Err(DraftError::TensorParallel(2))
        );
        let missing = [&DRAFT_FLAGS[..5], &["/nonexistent/ferrite-draft"]].concat();
        assert_eq!(
            check_args(&args(&missing)),
            Err(DraftError::MissingPath("/nonexistent/ferrite-draft".into()))
        );
    }

    #[test]
    fn the_draft_is_prepared_like_the_model_and_reaches_every_shard() {
        let programs = Programs {
            server: "/venv/bin/ferrite-server".into(),
            router: "/venv/bin/ferrite-router".into(),
        };
        let args = args(&[&DRAFT_FLAGS[..], &["--revision", "v2"]].concat());
        let prepare = prepare_draft_command(&args, &programs, "org/draft");
        assert_eq!(prepare.name, "prepare-draft");
        assert_eq!(flag_value(&prepare.args, "--model-id"), Some("org/draft"));
        assert_eq!(flag_value(&prepare.args, "--revision"), None);
        let facts = ModelFacts::default();
        let mut plan =
            build_plan(&args, Path::new("/cache/model"), &facts, &programs, 7).expect("valid plan");
        add_draft_model(&mut plan, Path::new("/cache/draft"));
        for shard in &plan.shards {
            let argv = &shard.process.args;
            assert_eq!(flag_value(argv, "--speculative-method"), Some("draft"));
            assert_eq!(flag_value(argv, "--draft-model-id"), Some("/cache/draft"));
        }
        let router = plan.router.as_ref().expect("router");
        assert_eq!(flag_value(&router.args, "--draft-model-id"), None);
        assert_eq!(flag_value(&router.args, "--speculate"), Some("3"));
    }
}
