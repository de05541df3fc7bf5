//! Where completions come from: a model run in process (the continuous-batching engine of
//! libs/model, every sample of every prompt in flight together) or any OpenAI-compatible server
//! (POST /v1/completions through ureq).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use model::{Engine, GenerationEvent, GenerationRequest, SamplingParams};

/// One completion to generate.
#[derive(Clone, Debug)]
pub struct Job {
    /// The task's name (the key of [`FromFile`]).
    pub task: String,
    pub prompt: String,
    pub stops: Vec<String>,
    pub seed: u64,
}

/// Sampling settings shared by every job of a run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

/// A completion and its length in tokens (as the backend counted them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub text: String,
    pub tokens: usize,
}

/// A source of completions. One failed job is an `Err` in its slot, not a failed run.
pub trait Backend: Sync {
    /// What the summary names as the model.
    fn describe(&self) -> String;
    /// One result per job, in order; `progress` is called as each finishes.
    fn generate(
        &self,
        jobs: &[Job],
        sampling: Sampling,
        progress: &(dyn Fn() + Sync),
    ) -> Vec<Result<Generated, String>>;
}

/// A model in this process.
pub struct InProcess {
    pub engine: Engine,
}

impl Backend for InProcess {
    fn describe(&self) -> String {
        format!("{} (in process)", self.engine.model_name())
    }

    fn generate(
        &self,
        jobs: &[Job],
        sampling: Sampling,
        progress: &(dyn Fn() + Sync),
    ) -> Vec<Result<Generated, String>> {
        let tokenizer = self.engine.tokenizer();
        // Everything is submitted first so the engine batches all of it.
        let receivers: Vec<_> = jobs
            .iter()
            .map(|job| {
                let prompt = tokenizer
                    .encode_prompt(&job.prompt)
                    .map_err(|e| e.to_string())?;
                self.engine
                    .submit(GenerationRequest {
                        prompt,
                        max_tokens: sampling.max_tokens,
                        sampling: SamplingParams {
                            temperature: sampling.temperature,
                            top_p: sampling.top_p,
                            seed: job.seed,
                            ..SamplingParams::default()
                        },
                        stop: job.stops.clone(),
                    })
                    .map_err(|e| e.to_string())
            })
            .collect();
        receivers
            .into_iter()
            .map(|receiver| {
                let result = receiver.and_then(|receiver| {
                    let mut text = String::new();
                    for event in receiver {
                        match event {
                            GenerationEvent::Text(delta) => text.push_str(&delta),
                            GenerationEvent::Done(done) => {
                                return Ok(Generated {
                                    text,
                                    tokens: done.completion_tokens,
                                })
                            }
                            GenerationEvent::Error(e) => return Err(e),
                        }
                    }
                    Err("the engine stopped before the completion ended".into())
                });
                progress();
                result
            })
            .collect()
    }
}

/// An OpenAI-compatible server.
pub struct Server {
    /// e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub base_url: String,
    /// The `model` field of each request.
    pub model: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Per request.
    pub timeout: Duration,
}

impl Server {
    fn endpoint(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/completions")
    }

    fn complete(
        &self,
        agent: &ureq::Agent,
        job: &Job,
        sampling: Sampling,
    ) -> Result<Generated, String> {
        let body = serde_json::json!({
            "model": self.model,
            "prompt": job.prompt,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": job.seed,
            // OpenAI accepts at most 4 stop strings.
            "stop": job.stops.iter().take(4).collect::<Vec<_>>(),
            "stream": false,
        });
        let url = self.endpoint();
        let mut response = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{url}: reading the response: {e}"))?;
        if !status.is_success() {
            let shown: String = text.chars().take(200).collect();
            return Err(format!("{url}: HTTP {}: {shown}", status.as_u16()));
        }
        parse_completion(&text).map_err(|e| format!("{url}: {e}"))
    }
}

/// `choices[0].text` and `usage.completion_tokens` of an OpenAI completion response.
pub fn parse_completion(text: &str) -> Result<Generated, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the response is not JSON: {e}"))?;
    let completion = value["choices"][0]["text"]
        .as_str()
        .ok_or("the response has no choices[0].text")?;
    let tokens = value["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
    Ok(Generated {
        text: completion.to_string(),
        tokens,
    })
}

impl Backend for Server {
    fn describe(&self) -> String {
        format!("{} at {}", self.model, self.endpoint())
    }

    fn generate(
        &self,
        jobs: &[Job],
        sampling: Sampling,
        progress: &(dyn Fn() + Sync),
    ) -> Vec<Result<Generated, String>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Generated, String>>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.clamp(1, jobs.len().max(1)) {
                scope.spawn(|| loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(index) else { break };
                    let result = self.complete(&agent, job, sampling);
                    *results[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    progress();
                });
            }
        });
        results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err("not run".into()))
            })
            .collect()
    }
}

/// Completions read from a JSONL file of `{"name", "body"}` (or `"completion"`) lines, one per
/// task: validates a prompt set against its reference solutions, or re-judges saved samples.
pub struct FromFile {
    pub path: String,
    completions: std::collections::HashMap<String, String>,
}

impl FromFile {
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
        let mut completions = std::collections::HashMap::new();
        for (index, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = |what: &str| format!("{shown}: line {}: {what}", index + 1);
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(&format!("bad JSON: {e}")))?;
            let name = value["name"].as_str().ok_or_else(|| bad("no \"name\""))?;
            // A body is what extraction returns: it is followed by the function's closing brace.
            let completion = match (value["completion"].as_str(), value["body"].as_str()) {
                (Some(c), _) => c.to_string(),
                (None, Some(body)) => format!("{body}}}\n"),
                (None, None) => return Err(bad("neither \"body\" nor \"completion\"")),
            };
            completions.insert(name.to_string(), completion);
        }
        Ok(FromFile {
            path: shown,
            completions,
        })
    }

    /// The completion given for `task`, if any.
    pub fn completion(&self, task: &str) -> Option<&str> {
        self.completions.get(task).map(String::as_str)
    }
}

impl Backend for FromFile {
    fn describe(&self) -> String {
        format!("completions from {}", self.path)
    }

    fn generate(
        &self,
        jobs: &[Job],
        _sampling: Sampling,
        progress: &(dyn Fn() + Sync),
    ) -> Vec<Result<Generated, String>> {
        jobs.iter()
            .map(|job| {
                progress();
                self.completions
                    .get(&job.task)
                    .map(|text| Generated {
                        text: text.clone(),
                        tokens: 0,
                    })
                    .ok_or_else(|| format!("{}: no completion for {:?}", self.path, job.task))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_completions() {
        let got = parse_completion(
            r#"{"choices":[{"text":"    x\n","index":0}],"usage":{"completion_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!((got.text.as_str(), got.tokens), ("    x\n", 3));
        assert!(parse_completion("{}").unwrap_err().contains("choices"));
        assert!(parse_completion("<html>").unwrap_err().contains("not JSON"));
    }
}
