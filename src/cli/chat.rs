//! `injector chat [--run RUN] [--max-rounds N]`: a multi-turn conversation in the terminal, as the
//! source article's notebook had one: each question is rendered with the chat template after the
//! history of earlier rounds and answered by `query`'s streamed generation. `/reset` clears the
//! history, a conversation holds at most `--max-rounds` rounds, Ctrl-D (end of input) leaves.
//!
//! Standard output is the transcript: `user> QUESTION` (typed at the prompt on a terminal, echoed
//! when the input is piped) and `assistant> ANSWER`, streamed as it is generated. Notes (the banner,
//! a reset, dropped rounds, the round limit) go to standard error.
use super::query::{stream_answer, AnswerArgs};
use super::Global;
use clap::Args;
use injector::model::Loaded;
use std::io::{BufRead, IsTerminal, Write};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// Rounds (a question and its answer) a conversation holds; then only `/reset` goes on.
    #[arg(long, default_value_t = 20)]
    pub max_rounds: usize,
}

/// How many of the oldest `rounds` to drop so that the conversation's prompt, as `prompt_len`
/// counts it for the rounds kept, is at most `budget` tokens: the fewest that do, or all of them
/// when even the question alone is longer (generation then has less room, or refuses).
///
/// Errors: those of `prompt_len`.
pub fn rounds_to_drop<T>(
    rounds: &[T],
    budget: usize,
    mut prompt_len: impl FnMut(&[T]) -> injector::Result<usize>,
) -> injector::Result<usize> {
    for k in 0..rounds.len() {
        if prompt_len(&rounds[k..])? <= budget {
            return Ok(k);
        }
    }
    Ok(rounds.len())
}

/// The positions a prompt may take so that `max_tokens` (at most half the model's `limit`) remain
/// for the answer.
fn prompt_budget(limit: usize, max_tokens: usize) -> usize {
    limit - max_tokens.min(limit / 2)
}

/// One conversation: the rounds kept (question, answer; oldest first) and the rounds answered since
/// it began (dropping old rounds to fit the model does not give them back).
#[derive(Default)]
struct Conversation {
    rounds: Vec<(String, String)>,
    answered: usize,
}

/// Answers `question` after the conversation's rounds, streaming to `out`; drops the oldest rounds
/// first if the prompt would not leave room for the answer. Returns the answer's text.
///
/// Errors: bad input when the question alone fills the model's positions; libtorch's errors.
fn answer(
    a: &ChatArgs,
    g: &Global,
    loaded: &Loaded,
    conv: &mut Conversation,
    question: &str,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let tok = &loaded.tokenizer;
    let limit = loaded.model.cfg.max_position_embeddings;
    let budget = prompt_budget(limit, a.answer.max_tokens);
    let encode = |rounds: &[(String, String)]| tok.encode_chat(&a.answer.messages(rounds, question), true);
    let drop = rounds_to_drop(&conv.rounds, budget, |r| Ok(encode(r)?.len()))?;
    if drop > 0 {
        conv.rounds.drain(..drop);
        eprintln!(
            "(dropped the oldest {drop} round(s) to keep the prompt within {budget} of the model's {limit} positions)"
        );
    }
    let ids = encode(&conv.rounds)?;
    if ids.len() >= limit {
        return Err(injector::Error::BadInput(format!(
            "the question is {} tokens with its template; the model's limit is {limit}",
            ids.len()
        ))
        .into());
    }
    tracing::info!(
        "round {}: {} prompt tokens, {} earlier round(s) in the history",
        conv.answered + 1,
        ids.len(),
        conv.rounds.len()
    );
    write!(out, "assistant> ")?;
    out.flush()?;
    let answer = stream_answer(loaded, &ids, &a.answer.sampling(g)?, out, || {})?;
    writeln!(out)?;
    Ok(tok.decode(&answer))
}

pub fn run(a: ChatArgs, g: &Global) -> anyhow::Result<()> {
    a.answer.sampling(g)?;
    if a.max_rounds == 0 {
        return Err(injector::Error::BadInput("--max-rounds must be at least 1".into()).into());
    }
    let loaded = super::load_model(g, a.answer.run.as_deref())?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    if !g.quiet {
        let with = match &a.answer.run {
            Some(r) => format!("run {r}'s weights"),
            None => g.model_path().display().to_string(),
        };
        eprintln!(
            "chat with {with}: /reset clears the history, Ctrl-D leaves ({} rounds at most)",
            a.max_rounds
        );
    }
    let mut conv = Conversation::default();
    loop {
        if interactive {
            write!(out, "user> ")?;
            out.flush()?;
        }
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line)? == 0 {
            if interactive {
                writeln!(out)?;
            }
            return Ok(());
        }
        let line = String::from_utf8_lossy(&line);
        let question = line.trim();
        if question.is_empty() {
            continue;
        }
        if !interactive {
            writeln!(out, "user> {question}")?;
        }
        match question {
            "/reset" => {
                conv = Conversation::default();
                eprintln!("(history cleared)");
            }
            q if q.starts_with('/') => eprintln!("(unknown command {q}: /reset clears the history, Ctrl-D leaves)"),
            _ if conv.answered >= a.max_rounds => eprintln!(
                "(this conversation has had its {} rounds: /reset starts a new one, Ctrl-D leaves)",
                a.max_rounds
            ),
            q => match answer(&a, g, &loaded, &mut conv, q, &mut out) {
                Ok(text) => {
                    conv.rounds.push((q.to_string(), text));
                    conv.answered += 1;
                    if conv.answered == a.max_rounds {
                        eprintln!(
                            "(that was round {0} of {0}: /reset starts a new conversation)",
                            a.max_rounds
                        );
                    }
                }
                // A question too long for the model is refused; the conversation goes on.
                Err(e) if e.downcast_ref::<injector::Error>().is_some_and(|e| e.is_bad_input()) => {
                    eprintln!("(not answered: {e})")
                }
                Err(e) => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fewest_oldest_rounds_are_dropped() {
        // Each round costs 10 tokens, the question 5.
        let len = |r: &[u8]| Ok(5 + 10 * r.len());
        let rounds = [1u8, 2, 3, 4];
        assert_eq!(rounds_to_drop(&rounds, 45, len).unwrap(), 0, "everything fits");
        assert_eq!(rounds_to_drop(&rounds, 44, len).unwrap(), 1);
        assert_eq!(rounds_to_drop(&rounds, 25, len).unwrap(), 2);
        assert_eq!(rounds_to_drop(&rounds, 5, len).unwrap(), 4, "the question alone");
        assert_eq!(rounds_to_drop(&rounds, 4, len).unwrap(), 4, "not even the question");
        assert_eq!(rounds_to_drop(&[] as &[u8], 4, len).unwrap(), 0);
    }

    #[test]
    fn the_kept_rounds_are_the_newest() {
        let mut seen = Vec::new();
        let rounds = ["a", "b", "c"];
        let k = rounds_to_drop(&rounds, 1, |r| {
            seen.push(r.join(""));
            Ok(r.len())
        })
        .unwrap();
        assert_eq!(k, 2);
        assert_eq!(seen, ["abc", "bc", "c"]);
    }

    #[test]
    fn the_answer_keeps_its_room_but_at_most_half_the_positions() {
        assert_eq!(prompt_budget(2048, 256), 1792);
        assert_eq!(prompt_budget(256, 256), 128);
        assert_eq!(prompt_budget(256, 0), 256);
    }
}
