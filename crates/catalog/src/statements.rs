//! A phase file split into statements, from `sqlparser`'s tokens: strings,
//! quoted identifiers, comments and dollar quotes are tokens of their own,
//! and blocks opened inside a statement (a trigger body, `BEGIN ATOMIC`,
//! `CASE … END`) keep their inner `;` and `END`.

use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Whitespace};

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
    fn of(&self, loc: Location) -> usize {
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

/// Blocks opened inside a statement, whose inner `;` and `END` do not end
/// it: `BEGIN` opens one only in `CREATE … TRIGGER` (its body) or as
/// `BEGIN ATOMIC` (elsewhere it is a name: a column called `begin`), and
/// `CASE … END`.
#[derive(Default)]
struct Blocks {
    depth: usize,
    saw_trigger: bool,
}

impl Blocks {
    /// Takes in `word`, which follows `before` in its statement; `next`
    /// gives the word after it.
    fn see(&mut self, before: &[String], word: &str, next: impl Fn() -> Option<String>) {
        let Some(first) = before.first() else {
            return;
        };
        let next_is = |want: &str| next().as_deref() == Some(want);
        match word {
            // `CREATE [OR REPLACE] [TEMP] [CONSTRAINT] TRIGGER`, not a
            // column named `trigger`.
            "TRIGGER" if before.iter().all(|w| TRIGGER_HEAD.contains(&w.as_str())) => {
                self.saw_trigger = true
            }
            "BEGIN" if (first == "CREATE" && self.saw_trigger) || next_is("ATOMIC") => {
                self.depth += 1
            }
            "CASE" => self.depth += 1,
            // `END` closes a block or a CASE; `end = …` is a column.
            "END" if self.depth > 0 && !next_is("=") => self.depth -= 1,
            _ => {}
        }
    }
}

/// Splits `sql`'s `tokens` (with locations) into top-level statements,
/// each with its text as written (not re-printed from tokens: a string's
/// doubled quotes stay doubled).
pub(crate) fn split(sql: &str, tokens: &[TokenWithSpan]) -> Vec<Statement> {
    let offsets = Offsets::new(sql);
    let mut done_spans: Vec<(Location, Location)> = Vec::new();
    let mut span: Option<(Location, Location)> = None;
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
    let mut blocks = Blocks::default();
    for (i, t) in tokens.iter().enumerate() {
        let line = t.span.start.line;
        if !significant(t) {
            if let Some(text) = comment(&t.token) {
                let comment = Comment { line, text };
                match (current.as_mut(), done.last_mut()) {
                    (Some(s), _) => s.comments.push(comment),
                    (None, Some(last)) if ended_on == Some(line) => last.comments.push(comment),
                    (None, _) => pending.push(comment),
                }
            }
            continue;
        }
        if t.token == Token::SemiColon && blocks.depth == 0 {
            if let Some(s) = current.take() {
                done.push(s);
                done_spans.extend(span.take());
            }
            ended_on = Some(line);
            blocks.saw_trigger = false;
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
        blocks.see(&s.words, &w, || next_word(i));
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
