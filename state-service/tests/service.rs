//! The state service against a real redis-server (started by each test on a
//! free port): what proxies observe through its HTTP answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A port for a test's redis-server: each test of this process its own (tests run in
/// parallel and one restarts its server on the same port), below the ephemeral range.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 28_000 + (std::process::id() % 80) as u16 * 50;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 50, "no port left for a test redis-server");
        if TcpListener::bind(("127.0.0.1", base + n)).is_ok() {
            return base + n;
        }
    }
}

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            sleep(Duration::from_millis(20));
        }
        // Ours answers, not another process's on the same port (ours would have exited).
        assert!(matches!(child.try_wait(), Ok(None)), "redis-server could not take port {port}");
        Redis { child, port }
    }

    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

struct State {
    child: Child,
    addr: String,
}

impl State {
    fn start(redis_port: u16) -> State {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-state"))
            .args(["--listen", "127.0.0.1:0", "--redis", &format!("redis://127.0.0.1:{redis_port}")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.split('"').nth(3).unwrap().to_string();
        State { child, addr }
    }

    /// (status, body) of one request.
    fn call(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nhost: state\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split(' ').nth(1).unwrap().parse().unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    fn post(&self, path: &str) -> String {
        let (status, body) = self.call("POST", path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const T: &str = "74"; // "t" in hex

/// The fields of an `ok` answer: requests and tokens of the window, its start, Redis's
/// time (ms), then the slice granted: requests, tokens, slots, micro-USD.
fn ok_fields(answer: &str) -> Vec<u64> {
    assert!(answer.starts_with("ok "), "{answer}");
    answer.split(' ').skip(1).map(|f| f.trim().parse().unwrap()).collect()
}

#[test]
fn rpm_slices_never_grant_more_than_the_limit_across_concurrent_callers() {
    let redis = Redis::start();
    let state = std::sync::Arc::new(State::start(redis.port));
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let state = state.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| state.post(&format!("/v1/admit?t={T}&h={i}&ttl=60000&rpm=37&tok=5")))
                    .filter(|a| a.starts_with("ok "))
                    .map(|a| ok_fields(&a)[4])
                    .sum::<u64>()
            })
        })
        .collect();
    let granted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // 100 asks for 37: unless the minute turned during the test, exactly 37 granted.
    let refused = state.post(&format!("/v1/admit?t={T}&h=ff&ttl=60000&rpm=37"));
    assert!(granted == 37 || refused.starts_with("ok "), "{granted} granted");
    assert!(refused.starts_with("rpm ") || granted < 37, "{refused}");
    let retry: u64 = refused.split(' ').nth(1).unwrap().trim().parse().unwrap();
    assert!((1..=60).contains(&retry));
}

#[test]
fn a_slice_is_an_eighth_of_what_is_left_and_what_comes_back_is_granted_again() {
    let redis = Redis::start();
    let state = State::start(redis.port);
    let first = ok_fields(&state.post(&format!("/v1/admit?t={T}&h=a&ttl=60000&rpm=60")));
    assert_eq!((first[0], first[4]), (7, 7));
    let start = first[2];
    let second = ok_fields(&state.post(&format!("/v1/admit?t={T}&h=b&ttl=60000&rpm=60")));
    assert_eq!((second[0], second[4]), (13, 6));
    // `a` used 2 of its 7: the 5 it gives back count for nobody, and are granted again.
    state.post(&format!("/v1/settle?t={T}&h=a&ws={start}&br=5"));
    let third = ok_fields(&state.post(&format!("/v1/admit?t={T}&h=b&ttl=60000&rpm=60")));
    assert!(third[0] == 8 + third[4] || third[2] != start, "{third:?}");
}

#[test]
fn parallel_slots_come_back_when_given_and_expire_with_their_holder() {
    let redis = Redis::start();
    let state = State::start(redis.port);
    let admit = |h: &str, ttl: u64| state.post(&format!("/v1/admit?t={T}&h={h}&ttl={ttl}&par=2"));
    assert_eq!(ok_fields(&admit("a", 60_000))[6], 1);
    assert_eq!(ok_fields(&admit("b", 300))[6], 1);
    assert_eq!(admit("c", 60_000), "par 2");
    state.post(&format!("/v1/settle?t={T}&h=a&bpar=1"));
    assert_eq!(ok_fields(&admit("c", 60_000))[6], 1);
    // Holder b never gave its slot back (its proxy crashed): it expires after 300 ms.
    assert_eq!(admit("d", 60_000), "par 2");
    sleep(Duration::from_millis(400));
    assert_eq!(ok_fields(&admit("d", 60_000))[6], 1);
}

#[test]
fn budget_slices_hold_worst_cases_and_spend_moves_from_held_to_spent() {
    let redis = Redis::start();
    let state = State::start(redis.port);
    let admit = |h: &str| state.post(&format!("/v1/admit?t={T}&h={h}&ttl=60000&bl=50000&bp=7&bw=20000"));
    assert_eq!(ok_fields(&admit("a"))[7], 20_000);
    assert_eq!(ok_fields(&admit("b"))[7], 20_000);
    // 40,000 held of 50,000: a third worst case of 20,000 does not fit.
    assert!(admit("c").starts_with("budget 0 40000 "), "{}", admit("c"));
    // a's request cost 6,000 of its 20,000: it tells the cost and gives back the rest.
    state.post(&format!("/v1/settle?t={T}&h=a&bp=7&cost=6000&bb=14000"));
    assert!(admit("c").starts_with("ok "));
    assert!(admit("d").starts_with("budget 6000 40000 "));
    // Another period starts from nothing spent (what is held stays held).
    let other = state.post(&format!("/v1/admit?t={T}&h=e&ttl=60000&bl=50000&bp=8&bw=5000"));
    assert_eq!(ok_fields(&other)[7], 5_000);
    // A large budget grants 64 worst cases at most.
    let big = state.post("/v1/admit?t=75&h=a&ttl=60000&bl=1000000000&bp=7&bw=100");
    assert_eq!(ok_fields(&big)[7], 6_400);
}

#[test]
fn tokens_are_reserved_then_corrected_to_usage() {
    let redis = Redis::start();
    let state = State::start(redis.port);
    let first = ok_fields(&state.post(&format!("/v1/admit?t={T}&h=a&ttl=60000&tpm=1000&tok=900")));
    assert_eq!((first[0], first[1], first[5]), (1, 900, 900));
    let start = first[2];
    assert!(state.post(&format!("/v1/admit?t={T}&h=b&ttl=60000&tpm=1000&tok=200")).starts_with("tpm "));
    // 100 used of the 900 reserved: 800 given back.
    state.post(&format!("/v1/settle?t={T}&h=a&ws={start}&bk=800"));
    let second = state.post(&format!("/v1/admit?t={T}&h=b&ttl=60000&tpm=1000&tok=200"));
    // The same minute (else a fresh window counts only this request).
    assert!(second.starts_with("ok 2 300 ") || second.starts_with("ok 1 200 "), "{second}");
}

#[test]
fn learned_feedback_and_canary_rollbacks_reach_every_poller() {
    let redis = Redis::start();
    let state = State::start(redis.port);
    state.post("/v1/learned?k=6c72&i=00ff&g=bfc00000&s=3E800000");
    state.post("/v1/learned?k=6c72&i=0100&g=40000000&s=3f800000");
    state.post("/v1/canary?g=ab&m=6d31");
    let (status, all) = state.call("GET", "/v1/sync?g=ab&after=0");
    assert_eq!(status, 200);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines[0], "c 6d31");
    assert!(lines[1].starts_with("l ") && lines[1].ends_with(" 6c72 00ff bfc00000 3e800000"), "{all}");
    assert!(lines[2].ends_with(" 6c72 0100 40000000 3f800000"), "{all}");
    let id = lines[1].split(' ').nth(1).unwrap();
    let (_, rest) = state.call("POST", &format!("/v1/sync?g=ab&after={id}"));
    assert_eq!(rest.lines().filter(|l| l.starts_with("l ")).count(), 1, "{rest}");
    // Another configuration's canaries are its own.
    assert_eq!(state.call("GET", "/v1/sync?g=cd&after=99999999999999-0").1, "");
    assert_eq!(state.call("POST", "/v1/learned?k=6c72&i=zz&g=0&s=0").1, "`i` must be the prompt's inputs in hex");
    // NaN is no score.
    assert_eq!(state.call("POST", "/v1/learned?k=6c72&i=00&g=00000000&s=7fc00000").0, 400);
}

#[test]
fn bad_requests_name_the_field() {
    let redis = Redis::start();
    let state = State::start(redis.port);
    assert_eq!(state.call("POST", "/v1/admit?t=zz&h=a"), (400, "`t` must be a name in hex".into()));
    assert_eq!(state.call("POST", &format!("/v1/admit?t={T}&h=a&rpm=ten")).1, "`rpm` must be a whole number");
}

#[test]
fn redis_down_answers_503_fast_and_service_resumes_when_it_returns() {
    let mut redis = Redis::start();
    let state = State::start(redis.port);
    assert!(state.post(&format!("/v1/admit?t={T}&h=a&ttl=60000&rpm=100")).starts_with("ok 12 "));
    let port = redis.port;
    redis.stop();
    let started = Instant::now();
    let (status, body) = state.call("POST", &format!("/v1/admit?t={T}&h=b&ttl=60000&rpm=100"));
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    let _redis = Redis::start_on(port);
    // A fresh Redis (nothing persisted): counting starts again, without restarting the service.
    assert!(state.post(&format!("/v1/admit?t={T}&h=c&ttl=60000&rpm=100")).starts_with("ok 12 "));
}
