//! Passwords out of everything tandem shows: errors, `Debug`, logs.
//!
//! A database target comes in two spellings, each read the way libpq reads
//! it: a URL (`postgres://user:password@host/db?password=…`) and a keyword
//! string (`host=db password = 's3cret pw'`). Driver messages may quote
//! either, or a fragment of a malformed one (libpq reports
//! `invalid integer value "s3c" for connection option "port"` for a
//! password with an unencoded `/`), so messages are redacted twice: every
//! password spelling, and every piece of the configured password.

use std::borrow::Cow;

/// What replaces a password.
const MASK: &str = "***";

/// Removes passwords from a database URL, a libpq keyword string, or any
/// text that quotes them (a driver message), so that it can appear in errors
/// and logs.
///
/// URLs go through a URL parser (`url`), which masks the user-info password
/// and `password` query parameters; text it cannot parse (a password with an
/// unencoded `/`, `?`, `#` or `@`, a bad percent-encoding) is masked from
/// the `:` after the user name up to the last `@` of the authority.
/// Keyword strings are read as libpq does: `password`, optional spaces, `=`,
/// optional spaces, then a value in single quotes (with `\'` escapes) or up
/// to the next space.
///
/// ```
/// assert_eq!(tandem::redact("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
/// assert_eq!(tandem::redact("postgres://app:s3c/ret@db/x"), "postgres://app:***@db/x");
/// assert_eq!(tandem::redact("host=db password = 's3cret pw' user=app"), "host=db password = *** user=app");
/// assert_eq!(tandem::redact("/var/lib/app.db"), "/var/lib/app.db");
/// ```
pub fn redact(text: &str) -> String {
    let text = redact_urls(text);
    redact_keywords(&text)
}

/// The pieces of a configured target's password, to mask wherever a driver
/// message quotes one (`redact` alone cannot know that `"s3c"` in a message
/// was a third of a password).
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    /// Longest first, so that a piece inside another is masked with it.
    pieces: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} pieces)", self.pieces.len())
    }
}

impl Secrets {
    /// The password of `target` (URL or keyword form) as written and as
    /// percent-decoded, and its pieces between URL delimiters.
    pub(crate) fn of(target: &str) -> Secrets {
        let mut pieces = Vec::new();
        for password in passwords(target) {
            let decoded = percent_decode(&password);
            for whole in [password, decoded] {
                pieces.extend(
                    whole
                        .split(['/', '?', '#', '@', ':', '%', ' ', '\'', '"', '&', '='])
                        .filter(|p| p.len() >= 3)
                        .map(str::to_owned),
                );
                if whole.len() >= 2 {
                    pieces.push(whole);
                }
            }
        }
        pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
        pieces.dedup();
        Secrets { pieces }
    }

    /// `text` with every password spelling and every piece of the
    /// configured password masked.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = redact(text);
        for piece in &self.pieces {
            if out.contains(piece.as_str()) {
                out = out.replace(piece.as_str(), MASK);
            }
        }
        out
    }
}

/// Why libpq would misread the password in URL `target` (and quote pieces of
/// it in its error), if it would: an unencoded `/`, `?` or `#`, or a `%` not
/// followed by two hex digits. Checked before the URL reaches libpq.
pub(crate) fn malformed_url_password(target: &str) -> Option<&'static str> {
    let rest = url_rest(target)?;
    let at = authority_end_at(rest)?;
    let userinfo = &rest[..at];
    let colon = userinfo.find(':')?;
    let password = &userinfo[colon + 1..];
    if password.contains(['/', '?', '#', '@']) {
        return Some(
            "the password in the URL contains an unencoded `/`, `?`, `#` or `@`; percent-encode \
             it (`/` as %2F, `?` as %3F, `#` as %23, `@` as %40)",
        );
    }
    let bytes = password.as_bytes();
    let bad_percent = bytes.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if bad_percent {
        return Some(
            "the password in the URL has a `%` that is not followed by two hex digits; \
             percent-encode a literal `%` as %25",
        );
    }
    None
}

/// The text after `scheme://`, if `text` starts with a URL scheme.
fn url_rest(text: &str) -> Option<&str> {
    let (scheme, rest) = text.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    is_scheme.then_some(rest)
}

/// Where the user info of a URL's `rest` (after `://`) ends: its last `@`
/// before whitespace or a quote, whatever delimiters come before it (a
/// password may hold an unencoded `/`). `None` without user info.
fn authority_end_at(rest: &str) -> Option<usize> {
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
        .unwrap_or(rest.len());
    rest[..end].rfind('@')
}

/// Every password in `target`: a URL's user-info password and `password`
/// query parameters, and keyword-form `password = value`s.
fn passwords(target: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(rest) = url_rest(target) {
        if let Some(at) = authority_end_at(rest) {
            if let Some((_, password)) = rest[..at].split_once(':') {
                found.push(password.to_owned());
            }
        }
    }
    let mut i = 0;
    while let Some((value, next)) = next_password_value(target, i) {
        found.push(unquote(&target[value]).into_owned());
        i = next;
    }
    found.retain(|p| !p.is_empty());
    found
}

fn unquote(value: &str) -> Cow<'_, str> {
    match value.strip_prefix('\'') {
        Some(inner) => {
            let inner = inner.strip_suffix('\'').unwrap_or(inner);
            Cow::Owned(inner.replace("\\'", "'").replace("\\\\", "\\"))
        }
        None => Cow::Borrowed(value),
    }
}

/// `%XX` sequences decoded (others kept as they are); invalid UTF-8 is
/// replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Masks URL passwords in `text`: a URL that the parser reads is rewritten
/// by it; any other `scheme://user:…@` is masked up to its last `@`.
fn redact_urls(text: &str) -> String {
    // A whole well-formed URL: let the parser mask what it knows.
    if let Ok(mut parsed) = url::Url::parse(text) {
        // The parser would read an unencoded `/`, `?` or `#` in the user
        // info as the end of the authority: leave those to `mask_userinfo`.
        let userinfo_ok = url_rest(text).is_none_or(|rest| {
            authority_end_at(rest).is_none_or(|at| !rest[..at].contains(['/', '?', '#']))
        });
        if userinfo_ok && parsed.has_host() {
            if parsed.password().is_some() && parsed.set_password(Some(MASK)).is_err() {
                return mask_userinfo(text);
            }
            if parsed
                .query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
            {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k.eq_ignore_ascii_case("password") {
                            MASK.to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            // The parser percent-encodes the mask: show it plainly.
            return parsed.as_str().replace("%2A%2A%2A", MASK);
        }
    }
    mask_userinfo(text)
}

/// Every `scheme://user:password@` in free text, password masked up to the
/// authority's last `@`.
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        match authority_end_at(tail) {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Masks `password = value` (any case, spaces around `=`, quoted values with
/// escapes) wherever it appears.
fn redact_keywords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some((value, next)) = next_password_value(text, from) {
        out.push_str(&text[copied..value.start]);
        out.push_str(MASK);
        copied = value.end;
        from = next;
    }
    out.push_str(&text[copied..]);
    out
}

/// The byte range of the next `password = value`'s value at or after
/// `from`, and where to search on.
fn next_password_value(text: &str, from: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut search = from;
    loop {
        let i = search + lower.get(search..)?.find("password")?;
        let after = i + "password".len();
        search = after;
        let boundary_before = text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if !boundary_before {
            continue;
        }
        let rest = &text[after..];
        let spaces = rest.len() - rest.trim_start().len();
        let Some(value_part) = rest[spaces..].strip_prefix('=') else {
            continue;
        };
        let value_start = after + spaces + 1 + (value_part.len() - value_part.trim_start().len());
        let value = &text[value_start..];
        let len = if value.starts_with('\'') {
            // Up to the closing quote; `\'` and `\\` are escapes.
            let mut escaped = false;
            value
                .char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    let close = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map_or(value.len(), |(j, _)| j + 1)
        } else if text[..i].ends_with(['?', '&']) {
            // A URL query parameter ends at `&`, `#` or a space.
            value
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | '#'))
                .unwrap_or(value.len())
        } else {
            // A keyword value (libpq): up to whitespace; a backslash escapes
            // the next character (a space included).
            let mut escaped = false;
            value
                .char_indices()
                .find(|&(_, c)| {
                    let end = c.is_whitespace() && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map_or(value.len(), |(j, _)| j)
        };
        if len == 0 {
            continue;
        }
        return Some((value_start..value_start + len, value_start + len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_password_form() {
        let cases = [
            ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:p%40w@h:1/db?sslmode=disable",
                "postgresql://u:***@h:1/db?sslmode=disable",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=pw&user=u",
                "postgres://h/db?password=***&user=u",
            ),
            (
                "host=h PASSWORD=pw dbname=x",
                "host=h PASSWORD=*** dbname=x",
            ),
            (
                "host=h password = pw dbname=x",
                "host=h password = *** dbname=x",
            ),
            (
                "host=h password='p w' dbname=x",
                "host=h password=*** dbname=x",
            ),
            (
                "host=h password='p\\'w x' dbname=x",
                "host=h password=*** dbname=x",
            ),
            ("host=h password=ab\"cdefg x=1", "host=h password=*** x=1"),
            ("host=h password=se\\ cret x=1", "host=h password=*** x=1"),
            ("postgres://u:p/w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p#w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p%zzw@h/db", "postgres://u:***@h/db"),
            (
                "cannot open postgres://u:p/w@h/db: refused",
                "cannot open postgres://u:***@h/db: refused",
            ),
            ("file:app.db?mode=rwc", "file:app.db?mode=rwc"),
            ("no password here", "no password here"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn secrets_cover_the_fragments_libpq_quotes() {
        let s = Secrets::of("postgres://u:s3c/retPW@h/db");
        let message = "invalid integer value \"s3c\" for connection option \"port\"";
        assert!(!s.redact(message).contains("s3c"), "{}", s.redact(message));
        let s = Secrets::of("postgres://u:s3cret%zzPW@h/db");
        let message = "invalid percent-encoded token: \"s3cret%zzPW\"";
        let shown = s.redact(message);
        assert!(
            !shown.contains("s3cret") && !shown.contains("zzPW"),
            "{shown}"
        );
        let s = Secrets::of("host=h password='s3cret PW'");
        assert!(!s.redact("x s3cret PW y").contains("s3cret"));
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn malformed_url_passwords_are_named() {
        assert!(malformed_url_password("postgres://u:a/b@h/db").is_some());
        assert!(malformed_url_password("postgres://u:a%zzb@h/db").is_some());
        assert!(malformed_url_password("postgres://u:hunter2@x9@h/db").is_some());
        assert!(malformed_url_password("postgres://u:a%2Fb@h/db").is_none());
        assert!(malformed_url_password("postgres://u@h/db").is_none());
        assert!(malformed_url_password("host=h password=x").is_none());
    }
}
