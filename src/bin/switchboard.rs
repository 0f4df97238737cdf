//! `switchboard check CONFIG.json` and `switchboard explain CONFIG.json REQUEST.json`:
//! the filter's own configuration validation and routing decision, offline;
//! `switchboard training-data`: a learned router's training data from the call log.
//! Built natively only (`--features cli`), never into the .wasm.

use std::process::ExitCode;

use switchboard::api::Endpoint;
use switchboard::explain;
use switchboard::training;

const USAGE: &str = "usage:
  switchboard check CONFIG.json
      validate a plugin configuration exactly as the filter does at load (exit 0 valid, 1 invalid)
  switchboard explain CONFIG.json REQUEST.json [--header name:value]... [--endpoint chat|completions|embeddings]
      print the routing decision for a request body: router rule, pool, members kept or dropped, ranking
  switchboard training-data CONFIG.json ROUTER CALLS.log... [--label-below 0.5]
      print the learned router's training CSV (prompt,label) from call logs written with call_log_prompts:
      its weak pool's answers joined with their feedback scores (label 1: scored below 0.5, weak was worse)";

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    match args {
        [cmd, config] if cmd == "check" => match explain::check(&read(config)?, &env) {
            Ok((_, summary)) => {
                print!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                for e in &errors {
                    let field = if e.field.is_empty() { "(top level)" } else { e.field.as_str() };
                    eprintln!("{config}: {field}: {}", e.message);
                }
                Ok(ExitCode::from(1))
            }
        },
        [cmd, config, request, options @ ..] if cmd == "explain" => {
            let mut headers = Vec::new();
            let mut endpoint = Endpoint::ChatCompletions;
            let mut rest = options.iter();
            while let Some(option) = rest.next() {
                let value = rest.next().ok_or_else(|| format!("{option} needs a value\n{USAGE}"))?;
                match option.as_str() {
                    "--header" | "-H" => {
                        let (name, value) =
                            value.split_once(':').ok_or_else(|| format!("--header wants name:value, got {value:?}"))?;
                        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                    }
                    "--endpoint" => {
                        endpoint = match value.as_str() {
                            "chat" => Endpoint::ChatCompletions,
                            "completions" => Endpoint::Completions,
                            "embeddings" => Endpoint::Embeddings,
                            other => return Err(format!("unknown endpoint {other:?}\n{USAGE}")),
                        }
                    }
                    other => return Err(format!("unknown option {other:?}\n{USAGE}")),
                }
            }
            let config = match explain::check(&read(config)?, &env) {
                Ok((config, _)) => config,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{config}: {}: {}", e.field, e.message);
                    }
                    return Ok(ExitCode::from(1));
                }
            };
            match explain::explain(&config, &read(request)?, endpoint, &headers) {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(text) => {
                    print!("{text}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        [cmd, config, router, logs @ ..] if cmd == "training-data" && !logs.is_empty() => {
            training_data(config, router, logs)
        }
        _ => Err(USAGE.to_string()),
    }
}

fn training_data(config_path: &str, router: &str, args: &[String]) -> Result<ExitCode, String> {
    let mut label_below = training::DEFAULT_LABEL_BELOW;
    let mut logs = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--label-below" {
            let value = rest.next().ok_or_else(|| format!("--label-below needs a value\n{USAGE}"))?;
            label_below = value.parse().map_err(|_| format!("--label-below wants a number, got {value:?}"))?;
        } else {
            logs.push(arg);
        }
    }
    let config = match explain::check(&read(config_path)?, &env) {
        Ok((config, _)) => config,
        Err(errors) => {
            for e in &errors {
                eprintln!("{config_path}: {}: {}", e.field, e.message);
            }
            return Ok(ExitCode::from(1));
        }
    };
    let weak = config
        .routers
        .iter()
        .find(|r| r.name == router)
        .ok_or_else(|| format!("{config_path}: no router {router:?}"))?
        .learned
        .as_ref()
        .and_then(|l| config.pools.get(l.weak))
        .map(|p| p.name.clone())
        .ok_or_else(|| format!("{config_path}: router {router:?} has no learned part"))?;
    let mut text = String::new();
    for path in logs {
        text.push_str(&String::from_utf8_lossy(&read(path)?));
        text.push('\n');
    }
    let joined = training::join(text.lines(), router, &weak, label_below);
    print!("{}", joined.csv);
    eprintln!(
        "{} rows ({} weak worse) from router {router:?}'s answers by pool {weak:?}; {} answered but not scored, \
         {} scored but logged without their prompt (call_log_prompts off), {} lines not JSON",
        joined.rows, joined.weak_worse, joined.unscored, joined.without_prompt, joined.unreadable
    );
    Ok(if joined.rows == 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
