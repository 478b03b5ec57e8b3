//! What the children get for logs, metrics and traces, from the launcher's flags:
//!
//! - `--log-level` -> the router's `--log-level` and the shards' `--log-level` (Python's
//!   names). `RUST_LOG` reaches the router through the inherited environment and, being a
//!   finer filter, wins there (as in TGI).
//! - `--json-output` -> both log JSON lines, which the launcher tags with their origin.
//! - `--prometheus-port` -> the router's second, metrics-only listener.
//! - `--otlp-endpoint` -> both export spans there; `--otlp-service-name NAME` makes the
//!   services `NAME.router` and `NAME.shard` (each shard adds its rank as a resource
//!   attribute), so one trace shows which process did what.

use crate::args::{Args, LogLevel};

pub fn router_service_name(args: &Args) -> String {
    format!("{}.router", args.otlp_service_name)
}

pub fn shard_service_name(args: &Args) -> String {
    format!("{}.shard", args.otlp_service_name)
}

/// Flags appended to the router's command line.
pub fn router_flags(args: &Args) -> Vec<String> {
    let mut argv = vec![
        "--log-level".to_string(),
        args.log_level.as_rust().to_string(),
        "--prometheus-port".to_string(),
        args.prometheus_port.to_string(),
    ];
    if let Some(endpoint) = &args.otlp_endpoint {
        argv.extend([
            "--otlp-endpoint".to_string(),
            endpoint.clone(),
            "--otlp-service-name".to_string(),
            router_service_name(args),
        ]);
    }
    argv
}

/// Flags appended to every shard's `serve` command line.
pub fn shard_flags(args: &Args) -> Vec<String> {
    let mut argv = vec![
        "--log-level".to_string(),
        args.log_level.as_python().to_string(),
    ];
    if args.json_output {
        argv.push("--json-output".to_string());
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        argv.extend([
            "--otlp-endpoint".to_string(),
            endpoint.clone(),
            "--otlp-service-name".to_string(),
            shard_service_name(args),
        ]);
    }
    argv
}

impl LogLevel {
    /// tracing-subscriber's name (the router's `--log-level`).
    pub fn as_rust(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Python logging's name (the shards' `--log-level`); it has no trace level.
    pub fn as_python(self) -> &'static str {
        match self {
            LogLevel::Trace | LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARNING",
            LogLevel::Error => "ERROR",
        }
    }
}
