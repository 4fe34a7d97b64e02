//! The checks of `run`'s and `agent`'s flags that need no privileges and touch no kernel:
//! the export configuration, the function filter, and the flags that only make sense
//! together. Done before anything is loaded, so a usage error never costs an attach.
use crate::cli::TraceArgs;
use crate::exit::{CliError, CliResult, Exit};
use crate::export::config::{ExportConfig, ExportFlags};
use crate::probes::Probe;
use crate::report::FunctionFilter;

/// What the flags ask for, once checked.
pub struct Checked {
    pub export: ExportConfig,
    pub functions: FunctionFilter,
    /// `--probes …,function`.
    pub function_probes: bool,
    /// The audit marker's budget when it is governed (`--probes …,audit --max-overhead PCT`):
    /// it is then attached per process.
    pub audit_budget: Option<f64>,
}

/// Checks the flags; `env` reads the OTEL_* environment (a closure, for tests).
pub fn check(args: &TraceArgs, env: &dyn Fn(&str) -> Option<String>) -> CliResult<Checked> {
    let flags = ExportFlags {
        exporter: args.exporter.clone(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        otlp_protocol: args.otlp_protocol.clone(),
        otlp_file: args.otlp_file.clone(),
        config: args.config.clone(),
        audit_log_events: args.audit_logs.clone(),
        audit_args: args.audit_args,
        resource_command_line: args.resource_command_line,
    };
    let export = ExportConfig::resolve(&flags, env)
        .map_err(|e| CliError::new(Exit::Usage, e.to_string()))?;
    // Said before any usage error below, as it always was.
    if let Some(warning) = export.clear_text_header_warning() {
        tracing::warn!("{warning}");
    }
    let functions = FunctionFilter::new(
        args.function_include.as_deref(),
        args.function_exclude.as_deref(),
    )
    .map_err(|e| CliError::new(Exit::Usage, e.to_string()))?;
    if args.metrics_only && (export.audit_args || args.audit_logs.is_some()) {
        return Err(CliError::new(
            Exit::Usage,
            "--audit-args and --audit-logs shape audit log records, which --metrics-only \
             does not export",
        ));
    }
    if export.audit_args && !args.probes.iter().any(|p| p == Probe::Audit) {
        return Err(CliError::new(
            Exit::Usage,
            "--audit-args needs the audit marker: add --probes gc,import,audit",
        ));
    }
    let function_probes = args.probes.iter().any(|p| p == Probe::Function);
    let audit_probe = args.probes.iter().any(|p| p == Probe::Audit);
    if !function_probes && args.line_mode {
        return Err(CliError::new(
            Exit::Usage,
            "--line-mode concerns function probes: add --probes …,function",
        ));
    }
    if !function_probes && !audit_probe && args.max_overhead.is_some() {
        return Err(CliError::new(
            Exit::Usage,
            "--max-overhead governs the costly probes, function and audit: add --probes \
             …,function or --probes …,audit",
        ));
    }
    // The audit marker is governed when a budget is asked for explicitly: it is then
    // attached per process (one uprobe each), rather than once per interpreter file.
    let audit_budget = args.max_overhead.and_then(|m| m.0).filter(|_| audit_probe);
    Ok(Checked {
        export,
        functions,
        function_probes,
        audit_budget,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// `pyusdt run FLAGS -- true`, checked with an empty environment.
    fn check_run(flags: &[&str]) -> CliResult<Checked> {
        let mut argv = vec!["pyusdt", "run"];
        argv.extend_from_slice(flags);
        argv.extend_from_slice(&["--", "true"]);
        let cli = Cli::try_parse_from(argv).expect("flags parse");
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        check(&run.trace, &|_| None)
    }

    fn usage_error(flags: &[&str]) -> String {
        match check_run(flags) {
            Ok(_) => panic!("{flags:?} accepted"),
            Err(e) => {
                assert_eq!(e.exit, Exit::Usage, "{flags:?}");
                e.to_string()
            }
        }
    }

    #[test]
    fn defaults_pass() {
        let c = check_run(&[]).expect("defaults are valid");
        assert!(!c.function_probes);
        assert_eq!(c.audit_budget, None);
    }

    #[test]
    fn line_mode_needs_function_probes() {
        assert!(usage_error(&["--line-mode"]).contains("add --probes …,function"));
        assert!(check_run(&["--probes", "gc,function", "--line-mode"]).is_ok());
    }

    #[test]
    fn max_overhead_needs_a_costly_probe() {
        assert!(usage_error(&["--max-overhead", "5"]).contains("--max-overhead governs"));
        let c = check_run(&["--probes", "gc,audit", "--max-overhead", "5"]).expect("valid");
        assert_eq!(c.audit_budget, Some(0.05));
        let c = check_run(&["--probes", "function", "--max-overhead", "5"]).expect("valid");
        assert!(c.function_probes);
        assert_eq!(c.audit_budget, None, "audit is not selected");
    }

    #[test]
    fn audit_args_need_the_audit_marker() {
        assert!(usage_error(&["--audit-args"]).contains("needs the audit marker"));
    }

    #[test]
    fn metrics_only_refuses_audit_log_shaping() {
        let e = usage_error(&["--metrics-only", "--probes", "audit", "--audit-args"]);
        assert!(e.contains("--metrics-only"), "{e}");
    }

    #[test]
    fn bad_function_glob_is_a_usage_error() {
        assert!(
            usage_error(&["--function-include", "a[", "--probes", "function"])
                .contains("--function-include")
        );
    }
}
