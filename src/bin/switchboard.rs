//! `switchboard check CONFIG.json` and `switchboard explain CONFIG.json REQUEST.json`:
//! the filter's own configuration validation and routing decision, offline.
//! Built natively only (`--features cli`), never into the .wasm.

use std::process::ExitCode;

use switchboard::api::Endpoint;
use switchboard::explain;

const USAGE: &str = "usage:
  switchboard check CONFIG.json
      validate a plugin configuration exactly as the filter does at load (exit 0 valid, 1 invalid)
  switchboard explain CONFIG.json REQUEST.json [--header name:value]... [--endpoint chat|completions|embeddings]
      print the routing decision for a request body: router rule, pool, members kept or dropped, ranking";

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
        _ => Err(USAGE.to_string()),
    }
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
