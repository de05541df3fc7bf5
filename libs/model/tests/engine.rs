//! The scheduler on a real (random-weight) model file: greedy generation equals a hand-run greedy
//! loop, concurrent requests equal their solo runs, stop strings, max_tokens, cancellation,
//! shutdown and refused requests.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use model::sampling::argmax;
use model::{
    load_engine, Completion, Engine, EngineOptions, FinishReason, GenerationEvent,
    GenerationRequest, KvCache, Logits, Model, ModelConfig, SamplingParams, SeqInput, SubmitError,
};

fn config() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        context_length: 128,
        ..ModelConfig::preset("tiny").unwrap()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    gguf: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = model::testmodel::write_random_model(dir.path(), "m", &config(), 21).unwrap();
    Fixture { _dir: dir, gguf }
}

fn engine(f: &Fixture, max_batch: usize) -> Engine {
    load_engine(
        &f.gguf,
        None,
        EngineOptions {
            max_batch,
            prefill_chunk: 7,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

fn request(prompt: &[u32], max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.to_vec(),
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
    }
}

/// Collects a request's events: the text and how it ended.
fn collect(rx: Receiver<GenerationEvent>) -> (String, Completion) {
    let mut text = String::new();
    for event in rx {
        match event {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Done(c) => return (text, c),
            GenerationEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("events ended without Done");
}

/// Greedy decoding by hand, straight on the model: the tokens until a stop token or `max`.
fn greedy_by_hand(m: &Model, stop: &[u32], prompt: &[u32], max: usize) -> Vec<u32> {
    let mut cache = KvCache::new(m.config.n_layers, m.config.kv_dim());
    let mut out = Vec::new();
    let mut next = prompt.to_vec();
    while out.len() < max {
        let logits = m
            .forward(&mut [SeqInput {
                cache: &mut cache,
                tokens: &next,
                logits: Logits::Last,
            }])
            .remove(0);
        let token = argmax(&logits);
        if stop.contains(&token) {
            break;
        }
        out.push(token);
        next = vec![token];
    }
    out
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    // Byte tokens (ids 5..261) spell printable text.
    (0..len as u32)
        .map(|i| 5 + 65 + (i * 7 + seed * 13) % 26)
        .collect()
}

#[test]
fn greedy_generation_equals_the_hand_run_loop_alone_and_in_a_crowd() {
    let f = fixture();
    let (m, tok) = Model::load(&f.gguf, None).unwrap();
    let prompts: Vec<Vec<u32>> = (0..5).map(|s| prompt(s, 5 + 4 * s as usize)).collect();
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| {
            tok.decode(&greedy_by_hand(&m, tok.stop_tokens(), p, 24))
                .unwrap()
        })
        .collect();
    // One at a time.
    let e = engine(&f, 8);
    for (p, want) in prompts.iter().zip(&expected) {
        let (text, done) = collect(e.submit(request(p, 24)).unwrap());
        assert_eq!(&text, want);
        assert_eq!(done.prompt_tokens, p.len());
    }
    // All at once, with fewer slots than requests (one waits in the queue).
    let e = engine(&f, 4);
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(request(p, 24)).unwrap())
        .collect();
    for (rx, want) in receivers.into_iter().zip(&expected) {
        assert_eq!(&collect(rx).0, want);
    }
}

#[test]
fn max_tokens_and_stop_strings_end_completions() {
    let f = fixture();
    let e = engine(&f, 4);
    let p = prompt(1, 9);
    let (full, done) = collect(e.submit(request(&p, 30)).unwrap());
    assert!(done.completion_tokens <= 30);
    if done.finish_reason == FinishReason::Length {
        assert_eq!(done.completion_tokens, 30);
    }
    let (short, done) = collect(e.submit(request(&p, 3)).unwrap());
    assert!(full.starts_with(&short));
    assert!(done.completion_tokens <= 3);

    // A stop string taken from the middle of the full completion.
    let chars: Vec<char> = full.chars().collect();
    assert!(
        chars.len() >= 8,
        "completion too short to test stop strings: {full:?}"
    );
    let stop: String = chars[4..6].iter().collect();
    let at = full.find(&stop).unwrap();
    let mut req = request(&p, 30);
    req.stop = vec!["never appears \u{1F600}".into(), stop];
    let (text, done) = collect(e.submit(req).unwrap());
    assert_eq!(text, full[..at]);
    assert_eq!(done.finish_reason, FinishReason::Stop);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let f = fixture();
    let e = engine(&f, 4);
    let sampled = |seed| {
        let mut req = request(&prompt(2, 6), 20);
        req.sampling = SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed,
        };
        collect(e.submit(req).unwrap()).0
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
}

/// Five sequences sample together (in parallel tasks, from the whole vocabulary's nucleus):
/// each draws what it draws alone with its seed.
#[test]
fn seeded_sampling_alone_equals_sampling_in_a_crowd() {
    let f = fixture();
    let e = engine(&f, 8);
    let sampled_request = |seed| {
        let mut req = request(&prompt(3, 6), 16);
        req.sampling = SamplingParams {
            temperature: 0.9,
            top_p: 0.9,
            seed,
            ..SamplingParams::default()
        };
        req
    };
    let alone: Vec<String> = (0..5)
        .map(|seed| collect(e.submit(sampled_request(seed)).unwrap()).0)
        .collect();
    let receivers: Vec<_> = (0..5)
        .map(|seed| e.submit(sampled_request(seed)).unwrap())
        .collect();
    let crowd: Vec<String> = receivers.into_iter().map(|rx| collect(rx).0).collect();
    assert_eq!(alone, crowd);
    assert!(alone.iter().any(|text| text != &alone[0]), "{alone:?}");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_dropped_receiver_frees_its_slot() {
    let f = fixture();
    let e = engine(&f, 2);
    let mut req = request(&prompt(3, 4), 100_000);
    req.sampling.temperature = 1.0; // keeps going (a stop token is rarely drawn twice in a row)
    let rx = e.submit(req.clone()).unwrap();
    wait_for("first text", || rx.try_recv().is_ok());
    assert_eq!(e.stats().active, 1);
    drop(rx);
    wait_for("slot freed", || e.stats().active == 0);
    // The engine still serves.
    let (_, done) = collect(e.submit(request(&prompt(3, 4), 2)).unwrap());
    assert!(done.completion_tokens <= 2);
}

#[test]
fn shutdown_ends_running_requests_and_refuses_new_ones() {
    let f = fixture();
    let e = engine(&f, 2);
    let mut req = request(&prompt(4, 4), 100_000);
    req.sampling.temperature = 1.0;
    let rx = e.submit(req.clone()).unwrap();
    e.shutdown();
    let last = rx.iter().last();
    assert!(
        matches!(
            last,
            Some(GenerationEvent::Error(_)) | Some(GenerationEvent::Done(_))
        ),
        "{last:?}"
    );
    assert_eq!(e.submit(req).unwrap_err(), SubmitError::ShuttingDown);
}

#[test]
fn bad_requests_are_refused_up_front() {
    let f = fixture();
    let e = engine(&f, 2);
    let context = config().context_length;
    assert_eq!(
        e.submit(request(&[], 5)).unwrap_err(),
        SubmitError::EmptyPrompt
    );
    assert_eq!(
        e.submit(request(&vec![70; context], 5)).unwrap_err(),
        SubmitError::PromptTooLong {
            prompt: context,
            context
        }
    );
    assert_eq!(
        e.submit(request(&[70, 1 << 20], 5)).unwrap_err(),
        SubmitError::BadToken(1 << 20)
    );
    assert!(matches!(
        e.submit(request(&[70], 0)),
        Err(SubmitError::BadSampling(_))
    ));
    let mut req = request(&[70], 5);
    req.sampling.top_p = 0.0;
    assert!(matches!(e.submit(req), Err(SubmitError::BadSampling(_))));
}

#[test]
fn a_full_context_ends_with_length() {
    let f = fixture();
    let e = engine(&f, 2);
    let context = config().context_length;
    let mut req = request(&vec![70; context - 3], 1000);
    req.sampling.temperature = 1.0;
    let (_, done) = collect(e.submit(req).unwrap());
    assert!(done.completion_tokens <= 3, "{done:?}");
    if done.finish_reason == FinishReason::Length {
        assert_eq!(done.completion_tokens, 3);
    }
}
