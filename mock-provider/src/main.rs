//! mock-provider: a fast mock LLM provider (OpenAI, Azure OpenAI, Anthropic,
//! Gemini, Bedrock) with runtime fault injection, for switchboard's
//! integration tests and benchmarks. See README.md.

mod body;
mod control;
mod eventstream;
mod faults;
mod kinds;
mod listener;
mod server;
mod sigv4;

use listener::{Defaults, Kind, Listener};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
usage: mock-provider --listen NAME=ADDR[,kind=KIND][,key=KEY][,secret=SECRET] [--listen ...]
                     [--no-record] [--stream-chunks N] [--stream-delay-ms MS] [--threads N]

  KIND: openai (default) | openai_compatible | azure | anthropic | gemini | bedrock
  KEY:  expected credential (bedrock: AWS access key id; SECRET: AWS secret key).
        Without key, auth is not checked.
  ADDR may use port 0. Once all listeners are bound, one line is printed to stdout:
        {\"listening\": {\"NAME\": \"127.0.0.1:PORT\", ...}}
  Control API on every listener: /_mock/health, /_mock/faults, /_mock/reset,
  /_mock/stats, /_mock/requests (see README.md).";

#[derive(Debug, PartialEq)]
struct ListenSpec {
    name: String,
    addr: String,
    kind: Kind,
    key: Option<String>,
    secret: Option<String>,
}

#[derive(Debug)]
struct Config {
    listens: Vec<ListenSpec>,
    defaults: Defaults,
    threads: Option<usize>,
}

fn parse_listen(s: &str) -> Result<ListenSpec, String> {
    let mut it = s.split(',');
    let first = it.next().unwrap_or("");
    let (name, addr) = first.split_once('=').ok_or_else(|| format!("--listen '{s}': expected NAME=ADDR"))?;
    if name.is_empty() || addr.is_empty() {
        return Err(format!("--listen '{s}': expected NAME=ADDR"));
    }
    let mut spec = ListenSpec { name: name.into(), addr: addr.into(), kind: Kind::OpenAi, key: None, secret: None };
    for opt in it {
        let (k, v) = opt.split_once('=').ok_or_else(|| format!("--listen '{s}': option '{opt}' must be KEY=VALUE"))?;
        match k {
            "kind" => spec.kind = Kind::parse(v).ok_or_else(|| format!("--listen '{s}': unknown kind '{v}'"))?,
            "key" => spec.key = Some(v.into()),
            "secret" => spec.secret = Some(v.into()),
            _ => return Err(format!("--listen '{s}': unknown option '{k}'")),
        }
    }
    if spec.kind == Kind::Bedrock && spec.key.is_some() && spec.secret.is_none() {
        return Err(format!("--listen '{s}': bedrock with key= also needs secret="));
    }
    Ok(spec)
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
    let mut cfg = Config {
        listens: Vec::new(),
        defaults: Defaults { stream_chunks: 3, stream_delay: Duration::ZERO, record: true },
        threads: None,
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" | "-l" => cfg.listens.push(parse_listen(&value()?)?),
            "--no-record" => cfg.defaults.record = false,
            "--stream-chunks" => {
                cfg.defaults.stream_chunks = value()?.parse().map_err(|e| format!("--stream-chunks: {e}"))?
            }
            "--stream-delay-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--stream-delay-ms: {e}"))?;
                cfg.defaults.stream_delay = Duration::from_millis(ms);
            }
            "--threads" => cfg.threads = Some(value()?.parse().map_err(|e| format!("--threads: {e}"))?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if cfg.listens.is_empty() {
        return Err("at least one --listen is required".into());
    }
    let mut names: Vec<&str> = cfg.listens.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w.first() == w.get(1)) {
        return Err("listener names must be unique".into());
    }
    Ok(cfg)
}

fn main() {
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mock-provider: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cfg.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-provider: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(cfg));
    std::process::exit(code);
}

async fn run(cfg: Config) -> i32 {
    let mut bound = serde_json::Map::new();
    let mut tasks = Vec::new();
    for spec in cfg.listens {
        let tcp = match tokio::net::TcpListener::bind(&spec.addr).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("mock-provider: cannot bind {} ({}): {e}", spec.addr, spec.name);
                return 1;
            }
        };
        let local = match tcp.local_addr() {
            Ok(a) => a.to_string(),
            Err(e) => {
                eprintln!("mock-provider: {e}");
                return 1;
            }
        };
        bound.insert(spec.name.clone(), serde_json::Value::String(local));
        let l = Arc::new(Listener::new(spec.name, spec.kind, spec.key, spec.secret, cfg.defaults.clone()));
        tasks.push((l, tcp));
    }
    for (l, tcp) in tasks {
        tokio::spawn(server::serve(l, tcp));
    }
    let line = serde_json::json!({ "listening": bound }).to_string();
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            // stdout closed: keep serving anyway
        }
    }
    wait_for_signal().await;
    0
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_cli() {
        let c = parse_args(args(&[
            "--listen",
            "a=127.0.0.1:0",
            "--listen=b=127.0.0.1:0,kind=bedrock,key=AKID,secret=wJal/K7+x=",
            "--no-record",
            "--stream-chunks",
            "5",
        ]))
        .unwrap();
        assert_eq!(c.listens.len(), 2);
        assert_eq!(c.listens[0].kind, Kind::OpenAi);
        assert_eq!(c.listens[1].kind, Kind::Bedrock);
        assert_eq!(c.listens[1].secret.as_deref(), Some("wJal/K7+x="));
        assert!(!c.defaults.record);
        assert_eq!(c.defaults.stream_chunks, 5);
        assert!(parse_args(args(&[])).is_err());
        assert!(parse_args(args(&["--listen", "a"])).is_err());
        assert!(parse_args(args(&["--listen", "a=x:0,kind=nope"])).is_err());
        assert!(parse_args(args(&["--listen", "a=x:0", "--listen", "a=y:0"])).is_err());
        assert!(parse_args(args(&["--listen", "a=x:0,kind=bedrock,key=K"])).is_err());
    }
}
