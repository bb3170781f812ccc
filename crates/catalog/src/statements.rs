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

/// The words that may come before `TRIGGER` in `CREATE … TRIGGER`.
const TRIGGER_HEAD: &[&str] = &["CREATE", "OR", "REPLACE", "TEMP", "TEMPORARY", "CONSTRAINT"];

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

/// Byte offsets of `sql`'s locations (1-based line and column, in chars).
struct Offsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Offsets { sql, line_starts }
    }

    /// The byte offset of `loc` (the end of the text past the last line).
    fn of(&self, loc: sqlparser::tokenizer::Location) -> usize {
        let Some(&start) = usize::try_from(loc.line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.line_starts.get(l))
        else {
            return self.sql.len();
        };
        let column = usize::try_from(loc.column.saturating_sub(1)).unwrap_or(usize::MAX);
        self.sql[start..]
            .char_indices()
            .nth(column)
            .map_or(self.sql.len(), |(i, _)| start + i)
    }

    /// The source text from `from` up to `to` (exclusive).
    fn text(
        &self,
        from: sqlparser::tokenizer::Location,
        to: sqlparser::tokenizer::Location,
    ) -> &'a str {
        let (a, b) = (self.of(from), self.of(to));
        self.sql.get(a..b.max(a)).unwrap_or_default()
    }
}

/// Splits `sql`'s `tokens` (with locations) into top-level statements,
/// each with its text as written (not re-printed from tokens: a string's
/// doubled quotes stay doubled).
pub(crate) fn split(sql: &str, tokens: &[TokenWithSpan]) -> Vec<Statement> {
    let offsets = Offsets::new(sql);
    let mut done_spans: Vec<(
        sqlparser::tokenizer::Location,
        sqlparser::tokenizer::Location,
    )> = Vec::new();
    let mut span: Option<(
        sqlparser::tokenizer::Location,
        sqlparser::tokenizer::Location,
    )> = None;
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
            if let Some(s) = current.take() {
                done.push(s);
                done_spans.extend(span.take());
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
        span = Some((span.map_or(t.span.start, |(from, _)| from), t.span.end));
        let w = word(&t.token);
        if !s.words.is_empty() {
            let next_is = |want: &str| next_word(i).as_deref() == Some(want);
            match w.as_str() {
                // `CREATE [OR REPLACE] [TEMP] [CONSTRAINT] TRIGGER`, not a
                // column named `trigger`.
                "TRIGGER" if s.words.iter().all(|w| TRIGGER_HEAD.contains(&w.as_str())) => {
                    saw_trigger = true
                }
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
    if let Some(s) = current {
        done.push(s);
        done_spans.extend(span.take());
    }
    for (statement, (from, to)) in done.iter_mut().zip(done_spans) {
        statement.text = offsets.text(from, to).to_owned();
    }
    done
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::Tokenizer;

    fn texts(sql: &str) -> Vec<(u64, String)> {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        super::split(sql, &tokens)
            .into_iter()
            .map(|s| (s.line, s.text))
            .collect()
    }

    #[test]
    fn a_statement_keeps_its_text_as_written() {
        assert_eq!(
            texts("UPDATE t SET n = 'O''Brien';  -- é\nDELETE FROM \"é\"\n  WHERE a = 'ü';\n"),
            [
                (1, "UPDATE t SET n = 'O''Brien'".to_owned()),
                (2, "DELETE FROM \"é\"\n  WHERE a = 'ü'".to_owned())
            ]
        );
        assert_eq!(texts("SELECT 1"), [(1, "SELECT 1".to_owned())]);
        assert_eq!(
            texts("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;"),
            [(
                1,
                "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql".to_owned()
            )]
        );
    }
}
