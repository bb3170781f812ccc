//! A phase file split into statements, from `sqlparser`'s tokens: strings,
//! quoted identifiers, comments and dollar quotes are tokens of their own,
//! and blocks opened inside a statement (a trigger body, `BEGIN ATOMIC`,
//! `CASE … END`) keep their inner `;` and `END`.

use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

/// A comment, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Comment {
    pub(crate) line: u64,
    pub(crate) text: String,
}

/// One top-level statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// 1-based line of its first token.
    pub(crate) line: u64,
    /// Its tokens as words: an unquoted word uppercased, `;` and `=` as
    /// themselves, any other token (a string, a number, punctuation) as "".
    pub(crate) words: Vec<String>,
    /// Its text, from the first token to the last (comments inside kept),
    /// without the `;` that ends it.
    pub(crate) text: String,
    /// The comments that belong to it: those between the previous
    /// statement's end and its start (except one on the previous
    /// statement's last line), those inside it, and one after its `;` on
    /// the same line.
    pub(crate) comments: Vec<Comment>,
}

impl Statement {
    /// Whether its words start with `words`.
    pub(crate) fn starts_with(&self, words: &[&str]) -> bool {
        self.words.len() >= words.len() && self.words.iter().zip(words).all(|(a, b)| a == b)
    }
}

fn word(token: &Token) -> String {
    match token {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        Token::SemiColon => ";".to_owned(),
        Token::Eq => "=".to_owned(),
        _ => String::new(),
    }
}

fn comment(token: &Token) -> Option<String> {
    match token {
        Token::Whitespace(Whitespace::SingleLineComment { comment, prefix }) => {
            Some(format!("{prefix}{}", comment.trim_end()))
        }
        Token::Whitespace(Whitespace::MultiLineComment(text)) => Some(format!("/*{text}*/")),
        _ => None,
    }
}

/// Splits `tokens` (with locations) into top-level statements.
pub(crate) fn split(tokens: &[TokenWithSpan]) -> Vec<Statement> {
    let significant = |t: &TokenWithSpan| !matches!(t.token, Token::Whitespace(_) | Token::EOF);
    let next_word = |i: usize| {
        tokens[i + 1..]
            .iter()
            .find(|t| significant(t))
            .map(|t| word(&t.token))
    };
    let mut done: Vec<Statement> = Vec::new();
    let mut current: Option<Statement> = None;
    let mut pending: Vec<Comment> = Vec::new();
    // The line of the last statement's `;`: a comment that starts on it is
    // that statement's.
    let mut ended_on: Option<u64> = None;
    // Blocks opened inside the statement; `BEGIN` opens one only in
    // `CREATE … TRIGGER` (its body) or as `BEGIN ATOMIC` (elsewhere it is
    // a name: a column called `begin`).
    let mut depth = 0usize;
    let mut saw_trigger = false;
    for (i, t) in tokens.iter().enumerate() {
        let line = t.span.start.line;
        if !significant(t) {
            let text = comment(&t.token);
            match (current.as_mut(), text) {
                (Some(s), text) => {
                    s.text.push_str(&t.token.to_string());
                    if let Some(text) = text {
                        s.comments.push(Comment { line, text });
                    }
                }
                (None, Some(text)) => match done.last_mut() {
                    Some(last) if ended_on == Some(line) => {
                        last.comments.push(Comment { line, text })
                    }
                    _ => pending.push(Comment { line, text }),
                },
                (None, None) => {}
            }
            continue;
        }
        if t.token == Token::SemiColon && depth == 0 {
            if let Some(mut s) = current.take() {
                s.text.truncate(s.text.trim_end().len());
                done.push(s);
            }
            ended_on = Some(line);
            saw_trigger = false;
            continue;
        }
        let s = current.get_or_insert_with(|| Statement {
            line,
            words: Vec::new(),
            text: String::new(),
            comments: std::mem::take(&mut pending),
        });
        s.text.push_str(&t.token.to_string());
        let w = word(&t.token);
        if !s.words.is_empty() {
            let next_is = |want: &str| next_word(i).as_deref() == Some(want);
            match w.as_str() {
                "TRIGGER" => saw_trigger = true,
                "BEGIN" if (s.words[0] == "CREATE" && saw_trigger) || next_is("ATOMIC") => {
                    depth += 1
                }
                "CASE" => depth += 1,
                // `END` closes a block or a CASE; `end = …` is a column.
                "END" if depth > 0 && !next_is("=") => depth -= 1,
                _ => {}
            }
        }
        s.words.push(w);
    }
    if let Some(mut s) = current {
        s.text.truncate(s.text.trim_end().len());
        done.push(s);
    }
    done
}
