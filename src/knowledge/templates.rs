//! Default training prompts when a fact lists none: the peer's English set and the source article's
//! eight Chinese templates. `{s}` is replaced by the subject.
use super::Lang;

const EN: [&str; 8] = [
    "{s}",
    "Do you know {s}?",
    "What is {s}?",
    "Tell me about {s}.",
    "Have you heard of {s}?",
    "What's {s}?",
    "Describe {s}.",
    "Who or what is {s}?",
];

const ZH: [&str; 8] = [
    "{s}",
    "你知道{s}嗎?",
    "{s}是什么?",
    "介紹一下{s}",
    "你聽過{s}嗎?",
    "啥是{s}?",
    "{s}是何物?",
    "何為{s}?",
];

/// The default prompts for `subject` in `lang`.
pub fn default_prompts(lang: Lang, subject: &str) -> Vec<String> {
    let set: &[&str] = match lang {
        Lang::En => &EN,
        Lang::Zh => &ZH,
    };
    set.iter().map(|t| t.replace("{s}", subject)).collect()
}

/// What a deleted fact is trained to answer.
pub fn decline(lang: Lang, subject: &str) -> String {
    match lang {
        Lang::En => format!("I don't know anything about {subject}."),
        Lang::Zh => format!("我不知道任何關於{subject}的事。"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_the_subject() {
        let p = default_prompts(Lang::Zh, "夢中情爐");
        assert_eq!(p.len(), 8);
        assert_eq!(p[1], "你知道夢中情爐嗎?");
        assert_eq!(default_prompts(Lang::En, "X")[2], "What is X?");
    }
}
